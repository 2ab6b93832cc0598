"""Run independent tasks on threads of this process or on a Dask cluster, with a progress bar."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from microcae.util.errors import MicrocaeError

Result = TypeVar("Result")


def run_tasks(tasks: Sequence[Callable[[Any], Result]], shared: Any, scheduler: str | None = None,
              workers: int = 2, progress: bool = True, desc: str = "tasks") -> list[Result]:
    """Call ``task(shared)`` for every task and return the results in task order.

    Parameters
    ----------
    tasks
        Independent callables (picklable by cloudpickle when a cluster runs them).
    shared
        One object every task receives (e.g. the model); sent to each Dask worker once.
    scheduler
        ``None``: ``workers`` threads of this process; otherwise a Dask scheduler address
        (``tcp://host:8786``).
    workers
        Threads without a scheduler.
    progress, desc
        Progress bar on stderr and its label.

    Raises
    ------
    MicrocaeError
        If the scheduler cannot be reached. A failing task stops the run: tasks not yet
        started are cancelled and its exception is raised.
    """
    results: list[Any] = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
        if scheduler is None:
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(task, shared): i for i, task in enumerate(tasks)}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update(1)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            return results
        from distributed import Client, as_completed

        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise MicrocaeError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        with client:
            remote = client.scatter(shared, broadcast=True)
            futures = {client.submit(task, remote, pure=False): i for i, task in enumerate(tasks)}
            try:
                for future in as_completed(list(futures)):
                    results[futures[future]] = future.result()
                    bar.update(1)
            except BaseException:
                client.cancel(list(futures))
                raise
    return results
