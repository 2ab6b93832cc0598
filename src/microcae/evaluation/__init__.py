"""Experiments that measure.

The method comparison, rate–distortion, the decoder attack and the reproduction report.
"""
