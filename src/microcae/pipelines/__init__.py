"""File-to-file jobs over any model: reconstruct, latent files, saliency files, demo, batch."""
