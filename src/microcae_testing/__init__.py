"""Test data shared by microcae's tests and benchmarks; not part of the installed package.

It sits beside ``microcae`` in ``src/`` so that an editable install (``make setup``) and
``PYTHONPATH=src`` import it without ``sys.path`` changes, while ``pyproject.toml`` leaves it out
of built wheels: the runtime package ships no test helpers.
"""
