"""Process-group plumbing for data-parallel training launched by ``torchrun``.

``torchrun --nproc_per_node N -m microcae train ...`` starts N copies of the command with the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. :func:`process_group` joins the group they describe (gloo on CPU, nccl
when CUDA is available) and says which share of every global batch this process takes.
Without those variables (a plain ``microcae train``) it is a group of one and does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from microcae.util.errors import MicrocaeError


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the training processes.

    Attributes
    ----------
    rank
        0-based index of this process; rank 0 alone logs and writes files.
    world_size
        Number of processes (1: ordinary single-process training).
    device
        Device this process computes on (``cuda:LOCAL_RANK`` with nccl, else the CPU).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, checkpoints and writes the model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    def shard(self, items: int) -> slice:
        """Return this rank's contiguous share of a global batch of ``items`` items.

        Shares differ in size by at most one item (the first ``items % world_size`` ranks take
        one more) and are empty when the batch has fewer items than there are ranks.
        """
        share, extra = divmod(items, self.world_size)
        start = self.rank * share + min(self.rank, extra)
        return slice(start, start + share + (self.rank < extra))

    def all_sum(self, value: float) -> float:
        """Sum a float over all ranks (the value itself on one process)."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item())

    def broadcast(self, value: float) -> float:
        """Rank 0's value of a float, on every rank (the value itself on one process)."""
        if not self.distributed:
            return value
        shared = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return float(shared.item())


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise MicrocaeError(f"environment variable {name}={text!r} is not an integer") from None


def current_group() -> ProcessGroup:
    """Describe an already initialised default process group (a group of one if there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessGroup()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), device)


def single_device(name: str) -> torch.device:
    """Resolve the device a single-process run computes on.

    Parameters
    ----------
    name
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    MicrocaeError
        If the name is not a device or CUDA is asked for but not available.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MicrocaeError(f"unknown device {name!r} (use cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise MicrocaeError(f"unsupported device {name!r} (use cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MicrocaeError(f"device {name!r} asked for, but this torch build sees no CUDA GPU")
    return device


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[ProcessGroup]:
    """Join the ``torchrun`` process group for the duration of the block.

    Parameters
    ----------
    device
        Device of a single-process run (see :func:`single_device`); under ``torchrun`` each
        process takes ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Yields
    ------
    ProcessGroup
        The default group if the caller already initialised one (left open afterwards);
        otherwise, if ``WORLD_SIZE`` > 1, a group joined with the ``env://`` rendezvous
        (backend nccl when CUDA is available, else gloo) and destroyed when the block ends;
        otherwise a group of one.

    Raises
    ------
    MicrocaeError
        If ``WORLD_SIZE`` > 1 but torch was built without distributed support.
    """
    if dist.is_available() and dist.is_initialized():
        yield current_group()
        return
    if _env_int("WORLD_SIZE", 1) <= 1:
        yield ProcessGroup(device=single_device(device))
        return
    if not dist.is_available():
        raise MicrocaeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend=backend, init_method="env://")
    try:
        yield current_group()
    finally:
        dist.destroy_process_group()
