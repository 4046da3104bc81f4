"""Intake: three doors (HTTP, S3 drop, CLI over HTTP), one job per request.

Parsing is pure. Acceptance runs under Powertools idempotency (DynamoDB persistence), and
the job id is derived from the same key, so even an expired idempotency record cannot fork
a second job.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote_plus

import yaml
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyValidationError
from pydantic import ValidationError

from chalicelib import aws, bodies
from chalicelib.aws.blobs import S3Uri
from chalicelib.callers import authenticate
from chalicelib.context import Ports
from chalicelib.errors import (
    Forbidden,
    IdempotencyConflict,
    InputError,
    InvalidManifest,
    InvalidRequest,
    ManifestTooLarge,
    ProoflineError,
    UnknownProfile,
)
from chalicelib.identity.signing import canonical_did
from chalicelib.jobs import lifecycle as jobs
from chalicelib.jobs import uploads
from chalicelib.models import Job, Manifest
from chalicelib.telemetry import metrics

SIDECAR_SUFFIX = ".job.json"
INTAKE_PREFIX = "intake/"

# Pydantic error types, grouped into the reason codes clients see.
_REASONS = {"missing": "missing_field", "extra_forbidden": "unknown_field"}
_TYPE_ERRORS = ("_type", "_parsing")


class _ManifestLoader(yaml.SafeLoader):
    """YAML without aliases: a few hundred bytes of anchors can expand to gigabytes."""
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in manifests")
        return super().compose_node(parent, index)


def parse_manifest(body: bytes | str, *, max_bytes: int, yaml_ok: bool = False) -> Manifest:
    """JSON (or, when asked, YAML) → Manifest, or InvalidManifest with a reason and field
    errors."""
    return manifest_from_dict(parse_fields(body, max_bytes=max_bytes, yaml_ok=yaml_ok))


def parse_fields(body: bytes | str, *, max_bytes: int, yaml_ok: bool = False) -> dict[str, Any]:
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > max_bytes:
        raise ManifestTooLarge(f"manifest is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        if not yaml_ok:
            return bodies.json_object(raw, max_bytes=max_bytes, required=True)
        bodies.check_nesting(raw)
        data = yaml.load(raw, Loader=_ManifestLoader)
        bodies.check_plain(data)
    except InvalidRequest as exc:
        raise InvalidManifest(f"manifest: {exc.message}", reason=exc.reason) from None
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidManifest(f"manifest is not valid YAML: {exc}",
                              reason="malformed_json") from exc
    if not isinstance(data, dict):
        raise InvalidManifest("manifest must be an object", reason="malformed_json")
    return data


def signed_manifest(ports: Ports, headers, fields: dict[str, Any]) -> Manifest:
    """The manifest of a submission, its `client_did` the DID that signed it."""
    manifest = manifest_from_dict(fields)
    signer = authenticate(ports, headers, action="submit", body=fields,
                          required=manifest.client_did is not None)
    if signer is not None and manifest.client_did and _canonical(manifest.client_did) != signer:
        raise Forbidden(f"the manifest names client {manifest.client_did} but {signer} signed "
                        "it", reason="wrong_signer")
    jobs.validate(manifest, catalog=ports.catalog, now=ports.clock(),
                  settles=ports.chain is not None)
    manifest = uploads.owned_input(ports, manifest, signer)
    return manifest.model_copy(update={"client_did": signer}) if signer else manifest


def _canonical(did: str) -> str:
    try:
        return canonical_did(did)
    except ValueError as exc:           # e.g. a mixed-case address whose checksum is wrong
        raise InvalidManifest(f"client_did: {exc}", reason="invalid_value") from None


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])) or "(root)", "type": e["type"],
                   "message": e["msg"]} for e in exc.errors()]
        raise InvalidManifest(f"manifest is invalid: {errors[0]['field']}: {errors[0]['message']}",
                              reason=_reason(errors[0]["type"]), details=errors) from exc


def _reason(error_type: str) -> str:
    if error_type in _REASONS:
        return _REASONS[error_type]
    return "wrong_type" if error_type.endswith(_TYPE_ERRORS) else "invalid_value"


def body_key(manifest: Manifest) -> str:
    canonical = json.dumps(manifest.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# -- HTTP ------------------------------------------------------------------------------------
def submit(ports: Ports, manifest: Manifest, *, idempotency_key: str | None,
           correlation_id: str | None, source: str = "http") -> tuple[dict, bool]:
    """Accept a manifest once per idempotency key (default: the manifest's own hash), scoped
    to the client so two clients' keys never meet. Returns (job document, created). The same
    key with another manifest → 409."""
    digest = body_key(manifest)
    key = f"http:{manifest.client_did or 'anonymous'}:{idempotency_key or digest}"
    request = {"key": key, "body": digest, "manifest": manifest.model_dump(mode="json"),
               "source": source, "correlation_id": correlation_id}
    try:
        result = _acceptor(ports)(request=request)
    except IdempotencyValidationError as exc:
        raise IdempotencyConflict("this Idempotency-Key was used with a different manifest") from exc
    replayed = result.pop("_replayed", False)
    return result["job"], result["created"] and not replayed


def refused(ports: Ports, fields: dict | None, error: ProoflineError) -> None:
    """A submission refused at the door makes no job; it is counted as `JobRejected`, by
    the class it named (`unknown` when the catalog has none such) and the reason."""
    kind = (fields or {}).get("kind")
    known = isinstance(kind, str) and kind in ports.catalog.job_classes
    metrics.count("JobRejected", kind=kind if known else "unknown", reason=error.reason,
                  source="http")


# -- S3 drop ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Drop:
    bucket: str
    key: str
    etag: str
    size: int

    @property
    def uri(self) -> S3Uri:
        return S3Uri(self.bucket, self.key)


def drops(event: dict) -> list[Drop]:
    """S3 records from an S3→SQS message body. The test event S3 sends when a notification
    is configured carries no records and yields nothing."""
    out = []
    for record in event.get("Records", []):
        if not record.get("eventName", "").startswith("ObjectCreated"):
            continue
        s3 = record["s3"]
        out.append(Drop(bucket=s3["bucket"]["name"], key=unquote_plus(s3["object"]["key"]),
                        etag=s3["object"].get("eTag", "").strip('"'),
                        size=int(s3["object"].get("size", 0))))
    return out


def accept_drop(ports: Ports, drop: Drop, *, correlation_id: str | None = None) -> dict | None:
    """Turn a dropped object (or its sidecar manifest) into a job. Returns the job document,
    or None while a prefix-less object waits for its sidecar."""
    media, sidecar = _pair(drop)
    if sidecar is not None:
        head = ports.blobs.head(media.uri if isinstance(media, Drop) else media)
        if head is None:
            return None                      # the media object arrives later and retries this
        media = Drop(drop.bucket, sidecar.key[: -len(SIDECAR_SUFFIX)],
                     head["ETag"].strip('"'), head["ContentLength"])
    key = f"s3:{media.bucket}/{media.key}@{media.etag}"
    try:
        manifest = _drop_manifest(ports, media)
    except (InvalidManifest, InputError) as error:
        return jobs.reject(ports, key=key, uri=str(media.uri), error=error,
                           correlation_id=correlation_id).model_dump(mode="json")
    if manifest is None:
        return None
    # No payload check: the object is the key, and a later sidecar must not fork the job.
    request = {"key": key, "manifest": manifest.model_dump(mode="json"), "source": "s3",
               "correlation_id": correlation_id}
    return _acceptor(ports)(request=request)["job"]


def _pair(drop: Drop) -> tuple[Drop | S3Uri, Drop | None]:
    if drop.key.endswith(SIDECAR_SUFFIX):
        return S3Uri(drop.bucket, drop.key[: -len(SIDECAR_SUFFIX)]), drop
    return drop, None


def _drop_manifest(ports: Ports, media: Drop) -> Manifest | None:
    """The sidecar's fields if there is one, else the class or profile named by the prefix;
    the input is the dropped object itself, hashed here."""
    sidecar_uri = S3Uri(media.bucket, media.key + SIDECAR_SUFFIX)
    fields: dict[str, Any]
    if ports.blobs.head(sidecar_uri) is not None:
        limit = ports.settings.max_manifest_bytes
        fields = parse_fields(ports.blobs.read(sidecar_uri, limit), max_bytes=limit)
        fields.pop("input_uri", None)        # the input is the dropped object, nothing else
        fields.pop("input_hash", None)
        fields.pop("client_did", None)       # the owner is the prefix's, not the file's word
        if "kind" not in fields:
            raise InvalidManifest("the sidecar manifest names no kind", reason="missing_field")
    else:
        name = _prefix_name(media.key)
        if name is None:
            return None
        job_class, profile = ports.catalog.resolve(name)
        fields = {"kind": job_class.name, **({"profile": profile} if profile else {})}
    job_class = ports.catalog.job_class(fields["kind"])
    if media.size > job_class.max_input_bytes:
        raise InputError(f"{media.uri} is {media.size} bytes; {job_class.name} accepts at most "
                         f"{job_class.max_input_bytes}", reason="input_too_large")
    sha, _ = ports.blobs.sha256(media.uri)
    client = uploads.intake_owner(ports.settings.intake_clients, media.key)
    return manifest_from_dict({**fields, "input_uri": str(media.uri), "input_hash": sha,
                               **({"client_did": client} if client else {})})


def _prefix_name(key: str) -> str | None:
    """`intake/<class-or-profile>/…` → the name; anything else has no implied job."""
    if not key.startswith(INTAKE_PREFIX):
        return None
    parts = key[len(INTAKE_PREFIX):].split("/", 1)
    if len(parts) < 2 or not parts[0]:
        raise UnknownProfile(f"{key!r} is not under intake/<class-or-profile>/")
    return parts[0]


# -- idempotent acceptance ---------------------------------------------------------------------
_IDEMPOTENCY = IdempotencyConfig(event_key_jmespath="key", payload_validation_jmespath="body",
                                 expires_after_seconds=24 * 3600,
                                 response_hook=lambda response, _: {**response, "_replayed": True})


def bind_lambda_context(context) -> None:
    """Lets an in-progress idempotency record expire with the invocation that wrote it."""
    if context is not None:
        _IDEMPOTENCY.register_lambda_context(context)


def _acceptor(ports: Ports) -> Callable[..., dict]:
    """`jobs.accept` under Powertools idempotency, keyed on request["key"] and checked
    against request["body"] (absent for S3 drops)."""
    def accept(request: dict) -> dict:
        job, created = jobs.accept(ports, Manifest.model_validate(request["manifest"]),
                                   job_id=jobs.derive_job_id(request["key"]),
                                   source=request["source"],
                                   correlation_id=request["correlation_id"])
        return {"job": job.model_dump(mode="json"), "created": created}

    persistence = DynamoDBPersistenceLayer(table_name=ports.settings.idempotency_table,
                                           boto3_client=aws.client("dynamodb"))
    return idempotent_function(accept, data_keyword_argument="request",
                               persistence_store=persistence, config=_IDEMPOTENCY)


def cancel_signed(ports: Ports, headers, job_id: str) -> Job:
    """A cancel, by the job's client or an operator (`PROOFLINE_OPERATORS`). A job with no
    client that the control plane made itself (a worker's challenge, a dropped file) is the
    operator's alone; an unsigned job submitted where unsigned submits are allowed can be
    cancelled the same way."""
    job = ports.store.get(job_id)
    owner, operators = job.manifest.client_did, ports.settings.operators
    operator_only = owner is None and (job.challenge is not None or _dropped(ports, job))
    by = authenticate(ports, headers, action="cancel", body={"job_id": job_id},
                      required=owner is not None or operator_only)
    if owner is not None and by != owner and by not in operators:
        raise Forbidden(f"job {job_id} is not yours to cancel", reason="not_your_job")
    if operator_only and by not in operators:
        raise Forbidden(f"job {job_id} was made by the control plane; only an operator "
                        "cancels it", reason="operator_only")
    return jobs.cancel(ports, job_id, by=by or "client")


def _dropped(ports: Ports, job: Job) -> bool:
    """Whether the job came from a file dropped into the intake bucket."""
    return bool(job.manifest.input_uri) and S3Uri.parse(job.manifest.input_uri).bucket == \
        ports.settings.intake_bucket
