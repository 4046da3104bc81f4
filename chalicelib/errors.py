"""One base exception; every subclass carries a machine-readable reason code.

Handlers map these to HTTP statuses (`status`) or to a failed job's `reason`; nothing below
the handlers knows about HTTP.
"""
from __future__ import annotations


class ProoflineError(Exception):
    status = 500
    reason = "internal_error"

    def __init__(self, message: str, *, reason: str | None = None, details: object = None):
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.details = details

    def to_dict(self) -> dict:
        body = {"reason": self.reason, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidRequest(ProoflineError):
    status = 400
    reason = "invalid_request"


class InvalidManifest(InvalidRequest):
    reason = "invalid_manifest"


class UnknownJobClass(InvalidManifest):
    reason = "unknown_job_class"


class UnknownProfile(InvalidManifest):
    reason = "unknown_profile"


class ManifestTooLarge(InvalidManifest):
    status = 413
    reason = "manifest_too_large"


class NotFound(ProoflineError):
    status = 404
    reason = "not_found"


class JobNotFound(NotFound):
    status = 404
    reason = "job_not_found"


class Conflict(ProoflineError):
    status = 409
    reason = "conflict"


class IllegalTransition(Conflict):
    reason = "illegal_transition"


class StaleVersion(Conflict):
    """Someone else moved the job first: the conditional write lost the race."""
    reason = "stale_version"


class JobExists(Conflict):
    reason = "job_exists"


class IdempotencyConflict(Conflict):
    reason = "idempotency_key_reused"


class InputError(ProoflineError):
    """The job's input cannot be served: permanent, so the job fails without retrying."""
    status = 422
    reason = "input_invalid"


class MediaError(InputError):
    reason = "media_unreadable"


class OutputRejected(ProoflineError):
    """Verification said no; the attempt is retried while attempts remain."""
    status = 422
    reason = "validation_failed"


class ExecutionError(ProoflineError):
    """A tool failed on an input that was already accepted: ours or transient, so the attempt
    is retried rather than the job failed for good."""
    reason = "execution_failed"


class FfmpegFailed(ExecutionError):
    reason = "ffmpeg_failed"


class FfmpegTimeout(ExecutionError):
    reason = "ffmpeg_timeout"


class Unauthorized(ProoflineError):
    """The request's signature cannot stand for anyone: missing, malformed, expired or used."""
    status = 401
    reason = "unauthorized"


class Forbidden(ProoflineError):
    """The signature is sound but does not speak for the identity or chain it claims."""
    status = 403
    reason = "forbidden"


class RateLimited(ProoflineError):
    """Too often from one caller: try again after `details.retry_after_s`."""
    status = 429
    reason = "rate_limited"


class Unavailable(ProoflineError):
    """The stage is not configured to serve this (a missing secret): the operator's to fix."""
    status = 503
    reason = "unavailable"
