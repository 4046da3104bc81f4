"""A job's input, fetched the one way every runner does: within its class's size limit, and
refused when it is not the object the manifest pinned by hash."""
from __future__ import annotations

from pathlib import Path

from chalicelib.aws.blobs import S3Uri
from chalicelib.context import Ports
from chalicelib.errors import InputError
from chalicelib.media import probe as media
from chalicelib.models import Job


def fetch_input(p: Ports, job: Job, path: Path) -> str:
    """Download the job's input to `path`; returns its sha256."""
    limit = p.catalog.job_class(job.kind).max_input_bytes
    p.blobs.download(S3Uri.parse(job.input_uri), path, limit=limit)
    digest = media.sha256_file(path)
    if job.manifest.input_hash and digest != job.manifest.input_hash:
        raise InputError(f"input hash is {digest}, the manifest says {job.manifest.input_hash}",
                         reason="input_hash_mismatch")
    return digest
