"""Rate–distortion-trained CAE: learned entropy model, integer code tables, range coding.

Modules, one job each: :mod:`~microcae.rd.entropy_model` (the factorized prior, a torch module),
:mod:`~microcae.rd.tables` (integer frequency tables built once from the prior and stored),
:mod:`~microcae.rd.coder` (range coding of integer latents with those tables; imports
``constriction`` only when called), :mod:`~microcae.rd.model` (the RD model, its file format and
fingerprint) and :mod:`~microcae.rd.train` (quantisation-aware training). Importing this package
does not import ``constriction``, ``zstandard`` or ``cryptography``.
"""
