"""Running I/O-bound calls side by side (S3 transfers), each in a copy of the caller's
context: its log keys and, on the local stack, the function its AWS calls are recorded as."""
from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

TRANSFERS = 8                    # S3 requests in flight at once


def side_by_side(call: Callable[[T], R], items: Iterable[T], workers: int = TRANSFERS) -> list[R]:
    """`call` on every item, `workers` at a time; results in the items' order, the first
    error raised."""
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(contextvars.copy_context().run, call, item) for item in items]
        return [future.result() for future in futures]
