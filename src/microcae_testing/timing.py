"""Timing helpers shared by the benchmarks: medians and the 2048² matmul floor."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(step: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median wall seconds of ``step()`` over ``repeats`` calls (after one untimed call)."""
    if warm_up:
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_seconds(repeats: int = 7) -> float:
    """Median seconds of one 2048 × 2048 float32 ``torch.mm`` (2048³ MACs), the floor."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    return median_seconds(lambda: torch.mm(a, b), repeats)
