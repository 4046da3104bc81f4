"""Inputs a client owns: uploads bound to their content, and the rule that a job may name
only an input its client owns.

An upload is a signed request for one (sha256, size). Its presigned PUT goes to a quarantine
key of its own in the intake bucket (bound to that length and checksum, which real S3
enforces); the bucket's notification brings the object back here, where it is hashed and,
only if hash and size match, copied to the content-addressed key in the artifacts bucket and
recorded as held by the uploader. Nothing a client sends is ever written to a content key,
so no upload can poison or replace one; the quarantine expires by lifecycle rule, and a
promoted input no job used expires too (tagged unused until a job names it).

A client owns an input when it has uploaded those bytes (each client proves possession with
its own upload: knowing a hash is not enough), or when it is an object under an intake
prefix mapped to that client (`PROOFLINE_INTAKE_CLIENTS`).
"""
from __future__ import annotations

import re
import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib import bodies
from chalicelib.aws.blobs import S3Uri, input_key
from chalicelib.aws.uploadstore import Upload
from chalicelib.callers import authenticate
from chalicelib.context import Ports
from chalicelib.errors import Conflict, Forbidden, InputError, InvalidRequest, JobNotFound
from chalicelib.identity.access import Caller
from chalicelib.models import Manifest, utcnow

# Reserved in the intake bucket: what lands here is an upload, never a drop.
QUARANTINE = "proofline-quarantine/"
UNUSED = {"proofline-used": "false"}          # the lifecycle rule expires inputs tagged so
USED = {"proofline-used": "true"}
UPLOAD_URL_SECONDS = 900
_INPUT_KEY = re.compile(r"^inputs/sha256/([0-9a-f]{64})$")
_UPLOAD_KEY = re.compile(r"^" + re.escape(QUARANTINE) + r"([0-9a-f]{32})$")


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sha256: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]
    # A private object stays private in every job that names it, whatever the manifest says.
    data_sensitivity: Literal["public", "private"] = "public"


def create(ports: Ports, headers, body: dict) -> dict:
    """A signed request to upload (sha256, size) → where to PUT it, or nothing to do when
    this client already holds those bytes."""
    request = bodies.model(UploadRequest, body, what="upload")
    owner = authenticate(ports, headers, action="upload", body=body)
    largest = max(c.max_input_bytes for c in ports.catalog.job_classes.values())
    if request.size > largest:
        raise InputError(f"{request.size} bytes is more than any job class accepts "
                         f"({largest})", reason="input_too_large")
    content = S3Uri(ports.settings.artifacts_bucket, input_key(request.sha256))
    answer = {"input_uri": str(content), "input_hash": request.sha256, "size": request.size}
    held = ports.uploads.holds(request.sha256, owner)
    if held is not None and (held == "private" or request.data_sensitivity == "public"):
        return {**answer, "upload_id": None, "state": "ready", "upload_url": None}
    upload_id = secrets.token_hex(16)
    quarantine = _quarantine(ports, upload_id)
    expires = min(ports.settings.presign_seconds, UPLOAD_URL_SECONDS)
    if request.size > ports.settings.multipart_bytes:
        return _multipart(ports, answer, upload_id, owner, request, quarantine)
    upload = Upload(upload_id=upload_id, owner=owner, sha256=request.sha256,
                    size=request.size, state="pending", created_at=utcnow().isoformat(),
                    sensitivity=request.data_sensitivity)
    ports.uploads.create(upload)
    url, put_headers = ports.blobs.presign_upload(quarantine, expires, size=request.size,
                                                  sha256=request.sha256)
    return {**answer, "upload_id": upload.upload_id, "state": "pending", "upload_url": url,
            "upload_headers": put_headers, "expires_in": expires}


MAX_PARTS = 10_000                    # S3's limit
PART_URL_SECONDS = 6 * 3600           # parts of a large file take a while to send


def _multipart(ports: Ports, answer: dict, upload_id: str, owner: str | None,
               request: UploadRequest, quarantine: S3Uri) -> dict:
    """Past S3's single-PUT limit: a multipart upload into quarantine, a URL per part bound
    to its length; `POST /uploads/{id}/complete` with the parts' ETags finishes it."""
    part = max(ports.settings.part_bytes, -(-request.size // MAX_PARTS))
    multipart_id = ports.blobs.start_multipart(quarantine)
    ports.uploads.create(Upload(upload_id=upload_id, owner=owner, sha256=request.sha256,
                                size=request.size, state="pending",
                                created_at=utcnow().isoformat(), multipart_id=multipart_id,
                                sensitivity=request.data_sensitivity))
    sizes = [min(part, request.size - offset) for offset in range(0, request.size, part)]
    parts = [{"part_number": n, "size": size,
              "url": ports.blobs.presign_part(quarantine, multipart_id, n, size,
                                              PART_URL_SECONDS)}
             for n, size in enumerate(sizes, start=1)]
    return {**answer, "upload_id": upload_id, "state": "pending", "upload_url": None,
            "part_bytes": part, "parts": parts, "expires_in": PART_URL_SECONDS}


class PartDone(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    part_number: Annotated[int, Field(ge=1, le=MAX_PARTS)]
    etag: Annotated[str, Field(min_length=1, max_length=128)]


class Completion(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    upload_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    parts: Annotated[list[PartDone], Field(min_length=1, max_length=MAX_PARTS)]


def complete(ports: Ports, headers, upload_id: str, body: dict) -> dict:
    """The uploader says every part is in: S3 assembles the object in quarantine, and its
    arrival is hashed and promoted like any upload."""
    request = bodies.model(Completion, body, what="completion")
    if request.upload_id != upload_id:
        raise InvalidRequest("the body names another upload", reason="invalid_value")
    upload = ports.uploads.get(upload_id)
    by = authenticate(ports, headers, action="upload", body=body,
                      owner=upload.owner if upload else None)
    if upload is None or upload.owner != by or upload.multipart_id is None:
        raise JobNotFound(f"no multipart upload {upload_id!r}", reason="upload_not_found")
    if upload.state != "pending":
        raise Conflict(f"upload {upload_id} is {upload.state}", reason="upload_finished")
    ports.blobs.complete_multipart(_quarantine(ports, upload_id), upload.multipart_id,
                                   [(p.part_number, p.etag) for p in request.parts])
    return {"upload_id": upload_id, "state": "pending"}


def status(ports: Ports, caller: Caller, upload_id: str) -> dict:
    upload = ports.uploads.get(upload_id) if re.fullmatch(r"[0-9a-f]{32}", upload_id) else None
    if upload is None or not (caller.operator or upload.owner == caller.did):
        raise JobNotFound(f"no upload {upload_id!r}", reason="upload_not_found")
    return {**upload.public(), "input_uri": str(S3Uri(ports.settings.artifacts_bucket,
                                                       input_key(upload.sha256)))}


def is_upload(ports: Ports, bucket: str, key: str) -> bool:
    return bucket == ports.settings.intake_bucket and key.startswith(QUARANTINE)


def promote(ports: Ports, key: str) -> Upload | None:
    """An uploaded object arrived in quarantine: hash it, and promote it if it is what was
    declared. Returns the upload as it now stands (None: not an upload of ours)."""
    match = _UPLOAD_KEY.match(key)
    upload = ports.uploads.get(match.group(1)) if match else None
    source = S3Uri(ports.settings.intake_bucket, key)
    if upload is None or upload.state != "pending":
        ports.blobs.delete(source)                     # stray, or a second PUT: never used
        return upload
    try:
        sha, size = ports.blobs.sha256(source)
    except InputError:
        return upload                                  # deleted meanwhile; the record stays pending
    if (sha, size) != (upload.sha256, upload.size):
        ports.uploads.finish(upload, "failed", reason="input_hash_mismatch")
        ports.blobs.delete(source)
        return ports.uploads.get(upload.upload_id)
    target = S3Uri(ports.settings.artifacts_bucket, input_key(sha))
    if ports.blobs.head(target) is None:
        # Same hash, same bytes: a race between two promotions writes identical content.
        ports.blobs.promote(source, target, UNUSED)
    ports.uploads.finish(upload, "ready")
    ports.blobs.delete(source)
    return ports.uploads.get(upload.upload_id)


def owned_input(ports: Ports, manifest: Manifest, client: str | None) -> Manifest:
    """The manifest, if its client owns its input and every segment it lists (hashes filled
    in from content keys); 403 input_not_yours otherwise. The inputs are marked used."""
    if not manifest.input_uri:
        return manifest
    sha, held = _owned(ports, manifest.input_uri, manifest.input_hash, client)
    changes: dict = {}
    if sha is not None:
        sensitivity = "private" if held == "private" else manifest.data_sensitivity
        changes = {"input_hash": sha, "data_sensitivity": sensitivity}
    if manifest.segments:
        owned = [_owned(ports, s.input_uri, s.input_hash, client) for s in manifest.segments]
        changes["segments"] = [s.model_copy(update={"input_hash": sha or s.input_hash})
                               for s, (sha, _) in zip(manifest.segments, owned)]
    return manifest.model_copy(update=changes)


def _owned(ports: Ports, input_uri: str, input_hash: str | None,
           client: str | None) -> tuple[str | None, str | None]:
    """(content hash, how it is held) of an upload `client` holds, or (None, None) for a
    drop under the client's intake prefix; 403 input_not_yours otherwise."""
    uri = S3Uri.parse(input_uri)
    settings = ports.settings
    match = _INPUT_KEY.match(uri.key) if uri.bucket == settings.artifacts_bucket else None
    if match:
        sha = f"sha256:{match.group(1)}"
        if input_hash not in (None, sha):
            raise InvalidRequest(f"{uri} holds {sha}, not {input_hash}",
                                 reason="input_hash_mismatch")
        held = ports.uploads.holds(sha, client)
        if held is not None:
            ports.blobs.tag(uri, USED)
            return sha, held
    elif uri.bucket == settings.intake_bucket and not uri.key.startswith(QUARANTINE) \
            and client is not None and intake_owner(settings.intake_clients, uri.key) == client:
        return None, None
    raise Forbidden(f"{uri} is not an input of {client or 'unsigned requests'}: upload it "
                    "first (POST /uploads), or drop it under your intake prefix",
                    reason="input_not_yours")


def intake_owner(intake_clients: dict[str, str], key: str) -> str | None:
    """The client an intake key belongs to: the longest mapped prefix it is under."""
    prefixes = [p for p in intake_clients if key.startswith(p)]
    return intake_clients[max(prefixes, key=len)] if prefixes else None


def _quarantine(ports: Ports, upload_id: str) -> S3Uri:
    return S3Uri(ports.settings.intake_bucket, f"{QUARANTINE}{upload_id}")
