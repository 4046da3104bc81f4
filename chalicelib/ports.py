"""The adapters a service function needs, built once per process from Settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Callable

from . import aws, catalog
from .blobs import Blobs
from .catalog import Catalog
from .config import Settings, settings
from .models import utcnow
from .queues import Queues
from .store import JobStore


@dataclass
class Ports:
    settings: Settings
    store: JobStore
    blobs: Blobs
    queues: Queues
    catalog: Catalog
    clock: Callable[[], datetime] = field(default=utcnow)


@lru_cache(maxsize=1)
def default() -> Ports:
    s = settings()
    return Ports(settings=s, store=JobStore(aws.client("dynamodb"), s.jobs_table),
                 blobs=Blobs(aws.client("s3")), queues=Queues(aws.client("sqs"), s.queues),
                 catalog=catalog.default())
