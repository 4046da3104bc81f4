"""Benchmarks: `make bench` (python -m bench) prints a table and writes bench/results.json."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def local_stack(**options) -> Iterator[tuple[object, Path]]:
    """A local stack of the benchmark's own, in a scratch directory: (stack, directory)."""
    from proofline.devstack import DevStack
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        stack = DevStack(Path(tmp) / "state", **options)
        stack.start()
        try:
            yield stack, Path(tmp)
        finally:
            stack.stop()


def operator_api(stack):
    """The stack's API as its operator: reads need a session, and the benchmarks read every
    job they submit (writes go unsigned, as the local stage allows)."""
    from eth_account import Account

    from chalicelib.identity.signing import did_for
    from proofline.client import Api
    operator = Account.from_key(stack.info.dev_keys["operator"])
    return Api(stack.info.api_url,
               reader=(operator, did_for(operator.address, stack.info.chain_id)))


def event_at(event: dict):
    """An event's `at` as an aware datetime (the API writes UTC)."""
    from datetime import datetime, timezone
    at = datetime.fromisoformat(event["at"])
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def settled_at(events: list[dict]):
    return min(event_at(e) for e in events if e["state"] == "settled")
