"""Entropy models and coders: the factorized prior, integer code tables, the range coder."""
