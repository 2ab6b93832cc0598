"""Foundations every layer may use: errors, atomic writes, runtime settings, the table writer."""
