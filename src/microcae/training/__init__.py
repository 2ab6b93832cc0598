"""Training: one loop (progress, per-epoch log, checkpoints, exact resume, seeds, torchrun).

``loop`` (the loop), ``settings`` (its settings and learning-rate schedule), ``objectives``
(what is minimised: the study's MSE, rate–distortion), ``architectures`` (the named models of
``microcae train --arch``), ``batches``, ``checkpoint``, ``outputs``, ``distributed`` and
``model_kinds`` (building and saving each model kind).
"""
