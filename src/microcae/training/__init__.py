"""Training: one loop (progress, per-epoch log, checkpoints, exact resume, seeds, torchrun).

``loop`` (the loop), ``settings`` (its settings and learning-rate schedule), ``objectives``
(what is minimised: the study's MSE, rate–distortion), ``architectures`` (the named models of
``microcae train --arch``), ``batches``, ``checkpoint``, ``outputs`` and ``distributed``.
Models are built, described and saved through :mod:`microcae.models.registry`.
"""
