"""boto3 clients built once per process from Settings, with a count of every API call.

The count (a botocore `before-call` hook) is how the benchmark measures requests per job;
it costs a dict increment per call. Observers see each call with its parameters, and each
URL presigned (whoever holds it acts with this function's rights, so IAM must grant it):
the local stack's IAM recorder (proofline/calls.py) is one.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import boto3
from botocore.config import Config

from chalicelib.config import settings

calls: Counter[str] = Counter()
# Each is called with (service, operation, parameters, presigned).
observers: list[Callable[[str, str, dict, bool], None]] = []

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32,
                 connect_timeout=5, read_timeout=30)
# SigV4 presigning: an upload URL then binds the length and checksum headers it names.
# CloudWatch: only the status page reads it, and shows "–" without it, so it does not wait
# long on a slow or failing CloudWatch (the page is served within API Gateway's 29 s).
_SERVICE_CONFIG = {"s3": Config(signature_version="s3v4"),
                   "cloudwatch": Config(retries={"mode": "standard", "max_attempts": 2},
                                        connect_timeout=2, read_timeout=5)}
_PARAMS = "proofline_params"


def _count(model, context=None, **_):
    calls[f"{model.service_model.service_name}.{model.name}"] += 1
    if observers:
        _notify(model, (context or {}).get(_PARAMS) or {}, presigned=False)


def _keep_params(params, model, context, **_):
    """`before-call` sees the serialized request: keep the call's own parameters for the
    observers. A presigned URL never reaches `before-call`: it is reported here."""
    if not observers:
        return
    if context.get("is_presign_request"):
        _notify(model, params, presigned=True)
    else:
        context[_PARAMS] = params


def _notify(model, params: dict, *, presigned: bool) -> None:
    for observe in observers:
        observe(model.service_model.service_name, model.name, params, presigned)


@lru_cache(maxsize=None)
def client(service: str):
    s = settings()
    config = _CONFIG.merge(_SERVICE_CONFIG[service]) if service in _SERVICE_CONFIG else _CONFIG
    return instrument(boto3.session.Session().client(service, region_name=s.region,
                                                     endpoint_url=s.aws_endpoint_url,
                                                     config=config))


def instrument(made):
    """Count every call `made` makes, and show it (and each URL it presigns) to the
    observers."""
    made.meta.events.register("before-parameter-build.*.*", _keep_params)
    made.meta.events.register("before-call.*.*", _count)
    return made


def reset_clients() -> None:
    client.cache_clear()
