"""Shapes of API responses that need more than a model dump (presigned links)."""
from __future__ import annotations

import re

from .blobs import S3Uri, input_key
from .errors import InvalidRequest
from .ports import Ports
from .store import JobView

_SHA = re.compile(r"^sha256:[0-9a-f]{64}$")


def job_document(ports: Ports, view: JobView) -> dict:
    """The job, its attempts, and a short-lived download link per promoted output."""
    doc = view.job.model_dump(mode="json")
    for output in doc["outputs"]:
        output["download_url"] = ports.blobs.presign_get(S3Uri.parse(output["uri"]),
                                                         ports.settings.presign_seconds)
    doc["attempts"] = [a.model_dump(mode="json") for a in view.attempts]
    return doc


def upload_slot(ports: Ports, body: dict) -> dict:
    """Where a client puts an input: content-addressed, so a known hash needs no upload."""
    sha = body.get("sha256")
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise InvalidRequest("sha256 must look like sha256:<64 hex>", reason="invalid_value")
    uri = S3Uri(ports.settings.artifacts_bucket, input_key(sha))
    if ports.blobs.head(uri) is not None:
        return {"input_uri": str(uri), "input_hash": sha, "upload_url": None}
    return {"input_uri": str(uri), "input_hash": sha,
            "upload_url": ports.blobs.presign_put(uri, ports.settings.presign_seconds)}
