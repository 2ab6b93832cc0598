"""The training loop: progress, per-epoch log, checkpoints, exact resume, seeds, torchrun."""
