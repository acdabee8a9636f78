"""Worker processes, one rule for every stage: ``workers: 0`` means one per core.

Pools fork where the platform can (the workers inherit the parent's arrays instead of pickling them) and fall back
to the platform's default start method elsewhere.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.pool import Pool
from typing import Any, Callable


def resolve_workers(workers: int | None) -> int:
    """The number of processes for a ``workers`` setting: itself when positive, else (0 or unset) one per core."""
    return workers if workers and workers > 0 else (os.cpu_count() or 1)


def process_pool(workers: int, initializer: Callable[..., Any] | None = None, initargs: tuple = ()) -> Pool:
    """A pool of ``workers`` processes (use it as a context manager)."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    return ctx.Pool(workers, initializer=initializer, initargs=initargs)
