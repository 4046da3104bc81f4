"""boto3 clients built once per process from Settings, with a count of every API call.

The count (a botocore `before-call` hook) is how the benchmark measures requests per job;
it costs a dict increment per call.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache

import boto3
from botocore.config import Config

from chalicelib.config import settings

calls: Counter[str] = Counter()

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32,
                 connect_timeout=5, read_timeout=30)
# SigV4 presigning: an upload URL then binds the length and checksum headers it names.
_SERVICE_CONFIG = {"s3": Config(signature_version="s3v4")}


def _count(model, **_):
    calls[f"{model.service_model.service_name}.{model.name}"] += 1


@lru_cache(maxsize=None)
def client(service: str):
    s = settings()
    config = _CONFIG.merge(_SERVICE_CONFIG[service]) if service in _SERVICE_CONFIG else _CONFIG
    made = boto3.session.Session().client(service, region_name=s.region,
                                          endpoint_url=s.aws_endpoint_url, config=config)
    made.meta.events.register("before-call.*.*", _count)
    return made


def reset_clients() -> None:
    client.cache_clear()
