"""What a stage tells its operators: the one logger and the metrics (CloudWatch EMF).

- `logger`: the one Powertools Logger (service `proofline`). Chalice's `app.log` is the same
  `logging` logger (the app is built with `configure_logs=False`), and the modules' child
  loggers (`Logger(child=True)` under `POWERTOOLS_SERVICE_NAME=proofline`) hand their lines
  to it, so each line is printed once, as JSON.
- `metrics`: counts and gauges in the `Proofline` namespace, each with its own dimensions
  (`service`, `stage` and the metric's own, e.g. `kind` and `reason`) plus a roll-up to
  `service` and `stage` alone, serialized by Powertools' EMF provider. Within a handler they
  are buffered and written when it returns; outside one (a script, a test) at once.
- `lambda_handler`: what every entry point is wrapped in: the Lambda context on every log
  line (`function_name`, `cold_start`, `function_request_id`, ...) and the metrics flushed.

Why not the `Metrics` singleton: its one metric set shares one dimension set, and the local
stack runs several handlers at once in one process. Here each thread buffers its own
invocation's metrics, and each dimension set is its own EMF document.

EMF documents go to stdout, where Lambda hands them to CloudWatch; the local stack writes
them to a file instead (`metrics.write_to`), so its output stays readable and tests can read
them back. `POWERTOOLS_METRICS_DISABLED=true` turns them off.
"""
from __future__ import annotations

import contextlib
import functools
import json
import resource
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)

from chalicelib import config

SERVICE = "proofline"
NAMESPACE = "Proofline"
MAX_VALUES = 100          # EMF: at most 100 values of one metric in one document

logger = Logger(service=SERVICE)

# Every metric a stage emits, with its own dimensions (besides `service` and `stage`). The
# alarms and the dashboard in template.yaml name only these (tests/aws/test_template.py).
NAMES = {
    "JobCreated": ("kind",),
    "JobSettled": ("kind",),
    "JobFailed": ("kind", "reason"),
    "JobRejected": ("kind", "reason", "source"),
    "JobCancelled": ("kind",),
    "ValidationFailed": ("kind", "reason"),
    "Retry": ("kind", "reason"),
    "SettlementReleased": ("kind",),
    "SettlementRefunded": ("kind",),
    "SettlementReclaimed": ("kind",),
    "SettlementForfeited": ("kind",),
    "SettlementResolved": ("kind",),
    "SettlementSkipped": ("kind",),
    "SettlementActionFailed": ("action",),
    "GasUsed": ("action",),
    "ChainFollowerLagBlocks": (),
    "SettlementDrift": (),
}


class Metrics:
    def __init__(self, namespace: str = NAMESPACE, service: str = SERVICE):
        self.namespace = namespace
        self.service = service
        self._local = threading.local()
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._stage: str | None = None

    # -- recording ------------------------------------------------------------------------
    def count(self, name: str, value: float = 1, *, metadata: dict | None = None,
              **dimensions: Any) -> None:
        self.add(name, value, "Count", metadata=metadata, **dimensions)

    def add(self, name: str, value: float, unit: str = "Count", *,
            metadata: dict | None = None, **dimensions: Any) -> None:
        """One value of `name` under `dimensions` (each stringified; an empty one reads
        `unknown`); `metadata` rides along in the document (searchable in Logs Insights,
        not a dimension). The name and dimensions are those `NAMES` lists."""
        if name not in NAMES or set(dimensions) != set(NAMES[name]):
            raise ValueError(f"metric {name} {sorted(dimensions)}: not as NAMES lists it")
        dims = tuple(sorted((k, str(v) if v not in (None, "") else "unknown")
                            for k, v in dimensions.items()))
        meta = tuple(sorted((metadata or {}).items()))
        record = (name, unit, float(value), dims, meta)
        buffers = getattr(self._local, "buffers", None)
        if buffers:
            buffers[-1].append(record)
        else:
            self._write([record])

    # -- flushing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def invocation(self) -> Iterator[None]:
        """Buffer what this thread records until the block ends, then write it (also when
        the block raises: what was committed before the error happened)."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = []
        buffers.append([])
        try:
            yield
        finally:
            self._write(buffers.pop())

    def documents(self, records: list[tuple]) -> list[dict]:
        """The EMF documents of `records`: one per dimension set and metadata."""
        groups: dict[tuple, list[tuple]] = defaultdict(list)
        for name, unit, value, dims, meta in records:
            groups[(dims, meta)].append((name, unit, value))
        out = []
        for (dims, meta), values in groups.items():
            for chunk in _chunks(values):
                provider = AmazonCloudWatchEMFProvider(namespace=self.namespace,
                                                       service=self.service)
                base = {"service": self.service, "stage": self.stage()}
                for key, value in (*base.items(), *dims):
                    provider.add_dimension(name=key, value=value)
                if dims:                            # the roll-up: service and stage alone
                    provider.add_dimensions(**base)
                for key, value in meta:
                    provider.add_metadata(key=key, value=value)
                for name, unit, value in chunk:
                    provider.add_metric(name=name, unit=unit, value=value)
                out.append(provider.serialize_metric_set())
        return out

    def _write(self, records: list[tuple]) -> None:
        if not records or is_metrics_disabled():
            return
        try:
            lines = [json.dumps(d, separators=(",", ":"), default=str)
                     for d in self.documents(records)]
        except Exception:  # noqa: BLE001 - a metric never fails the work it measures
            logger.exception("metrics not written", extra={"metrics": [r[0] for r in records]})
            return
        with self._lock:
            if self._path is None:
                for line in lines:
                    print(line, file=sys.stdout, flush=True)
            else:
                with self._path.open("a", encoding="utf-8") as sink:
                    sink.write("".join(line + "\n" for line in lines))

    def write_to(self, path: Path | str | None) -> None:
        """Append EMF documents to `path` (the local stack's), or to stdout when None."""
        self._path = Path(path) if path else None

    def stage(self) -> str:
        if self._stage is None:
            try:
                self._stage = config.settings().stage
            except Exception:  # noqa: BLE001 - a process without a stage still measures
                return "unknown"
        return self._stage


def _chunks(values: list[tuple]) -> Iterator[list[tuple]]:
    """Split so no document holds more than MAX_VALUES values of one metric."""
    chunk: list[tuple] = []
    seen: dict[str, int] = defaultdict(int)
    for item in values:
        if seen[item[0]] == MAX_VALUES:
            yield chunk
            chunk, seen = [], defaultdict(int)
        chunk.append(item)
        seen[item[0]] += 1
    if chunk:
        yield chunk


metrics = Metrics()


def lambda_handler(handler: Callable) -> Callable:
    """Wrap a Lambda entry point `(event, context)`: the context on every log line of the
    invocation (its keys reset first), its metrics flushed when it returns or raises.
    Chalice's handlers get it as middleware (`ConvertToMiddleware(lambda_handler)`)."""
    injected = logger.inject_lambda_context(handler, clear_state=True)

    @functools.wraps(handler)
    def handle(event, context, *args, **kwargs):
        with metrics.invocation():
            return injected(event, context, *args, **kwargs)
    return handle


def cpu_seconds() -> float:
    """CPU time of this process and the children it has waited for (an ffmpeg run), user
    and system: a difference of two readings is what the work between them cost, as long as
    nothing else runs in the process meanwhile (one invocation at a time, as in Lambda)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
