"""Every model kind microcae can load, save, fingerprint and run."""
