"""What an inference job's worker is given: its texts (inline, or read from a JSONL object),
redacted of configured patterns when the worker is not trusted with them.

Redaction is deterministic, so the trusted pool's re-execution runs the exact texts the
worker ran, and the timeline records how many matches were removed and the hash of what was
sent, never the texts.
"""
from __future__ import annotations

import hashlib
import json
import re

from chalicelib.aws.blobs import S3Uri
from chalicelib.context import Ports
from chalicelib.errors import InputError
from chalicelib.media import probe as media
from chalicelib.models import Job, is_marketplace

# Patterns a job class may name under `redact:` in job_classes.yaml.
PATTERNS = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "secret_key": re.compile(r"\b(?:0x[0-9a-fA-F]{64}|AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9]{20,})\b"),
}
MASK = "[redacted]"


def redact(text: str, names: list[str]) -> tuple[str, int]:
    count = 0
    for name in names:
        text, n = PATTERNS[name].subn(MASK, text)
        count += n
    return text, count


def redacts_for(p: Ports, job: Job) -> list[str]:
    """The patterns to strip before this job's input reaches its worker: the class's, when
    the worker is an untrusted marketplace worker; none for the trusted pools and the
    workers cleared by `PROOFLINE_TRUSTED_WORKERS`."""
    if not is_marketplace(job.worker) or job.worker in p.settings.trusted_workers:
        return []
    return list(p.catalog.job_class(job.kind).redact)


def dispatched_texts(p: Ports, job: Job) -> list[str]:
    names = redacts_for(p, job)
    return [redact(t, names)[0] for t in texts_of(p, job)] if names else texts_of(p, job)


def dispatched_prompt(p: Ports, job: Job) -> str:
    names = redacts_for(p, job)
    return redact(job.manifest.prompt, names)[0] if names else job.manifest.prompt


def digest(values) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(values, ensure_ascii=False)
                                      .encode("utf-8")).hexdigest()


def texts_of(p: Ports, job: Job) -> list[str]:
    """Inline texts, or a JSONL object: one JSON string or {"text": …} per line."""
    if job.manifest.texts:
        return list(job.manifest.texts)
    job_class = p.catalog.job_class(job.kind)
    raw = p.blobs.read(S3Uri.parse(job.input_uri), job_class.max_input_bytes)
    if job.manifest.input_hash and media.sha256_bytes(raw) != job.manifest.input_hash:
        raise InputError("input does not match its hash", reason="input_hash_mismatch")
    texts = []
    try:
        for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if line.strip():
                item = json.loads(line)
                texts.append(item["text"] if isinstance(item, dict) else item)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"input is not JSONL of texts (line {number}): {error}",
                         reason="invalid_jsonl") from error
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise InputError("input holds no texts, or a line that is not a non-empty string",
                         reason="invalid_jsonl")
    if len(texts) > (job_class.limits.max_texts or len(texts)):
        raise InputError(f"{len(texts)} texts; the class takes {job_class.limits.max_texts}",
                         reason="too_many_texts")
    return texts


