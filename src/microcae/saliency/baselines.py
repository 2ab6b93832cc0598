"""Baseline relevance methods through Captum and Zennit. Being written."""
