"""Figures for papers: reconstructions, saliency grids, curves."""
