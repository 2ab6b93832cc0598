"""Complex-step, forward- and reverse-mode engines (exact derivatives). Being written."""
