"""Verification rules for inference outputs: pure functions from what the verifier measured
(the bytes it fetched, and its own re-execution on a trusted pool) to a Verdict."""
from __future__ import annotations

import io
import json
from typing import Any, Sequence

import numpy as np

from chalicelib.verification.policies import Verdict

EMBEDDING_DIM = 384
NORM_TOLERANCE = 1e-3
AUDIT_LISTED = 64                 # audited positions named on the timeline (then only counted)


def load_vectors(data: bytes) -> np.ndarray:
    """An .npy of float32 vectors; never unpickles."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def embeddings(*, data: bytes, reported_sha256: str, actual_sha256: str, expected_count: int,
               rows: Sequence[int], reference: np.ndarray | None,
               cosine_min: float) -> Verdict:
    """Schema (count × 384 float32), finite, unit norm, and the sampled rows within
    `cosine_min` of the trusted re-execution (`reference`, one row per sampled index)."""
    checks: dict[str, bool] = {"sha256_matches": actual_sha256 == reported_sha256}
    measured: dict[str, Any] = {"sha256": actual_sha256, "cosine_min_required": cosine_min}
    try:
        vectors = load_vectors(data)
    except (ValueError, OSError) as error:
        checks["schema"] = False
        measured["error"] = str(error)[:300]
        return Verdict("embedding_reexecution", checks, measured)
    checks["schema"] = (vectors.dtype == np.float32 and vectors.ndim == 2
                        and vectors.shape == (expected_count, EMBEDDING_DIM))
    measured.update(shape=list(vectors.shape), dtype=str(vectors.dtype))
    if not checks["schema"]:
        return Verdict("embedding_reexecution", checks, measured)
    checks["finite"] = bool(np.isfinite(vectors).all())
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    checks["unit_norm"] = bool(np.all(np.abs(norms - 1) <= NORM_TOLERANCE))
    measured["norm_max_deviation"] = float(np.max(np.abs(norms - 1))) if len(norms) else 0.0
    if reference is None:
        checks["reexecution_matches"] = False
        return Verdict("embedding_reexecution", checks, measured)
    claimed = vectors[list(rows)].astype(np.float64)
    trusted = reference.astype(np.float64)
    cosines = np.sum(claimed * trusted, axis=1) / (
        np.linalg.norm(claimed, axis=1) * np.linalg.norm(trusted, axis=1) + 1e-12)
    measured.update(rows=expected_count, rows_reexecuted=len(rows),
                    audited_rows=list(rows)[:AUDIT_LISTED],
                    cosine_min=round(float(cosines.min()), 6))
    checks["reexecution_matches"] = bool(cosines.min() >= cosine_min)
    return Verdict("embedding_reexecution", checks, measured)


def generation(*, data: bytes, reported_sha256: str, actual_sha256: str, max_tokens: int,
               model: str, reference: dict | None) -> Verdict:
    """Valid UTF-8 JSON naming the model asked for, no more tokens than allowed, and in
    deterministic mode exactly the text and tokens a trusted re-execution produces."""
    checks: dict[str, bool] = {"sha256_matches": actual_sha256 == reported_sha256}
    measured: dict[str, Any] = {"sha256": actual_sha256}
    try:
        claimed = json.loads(data.decode("utf-8"))
        text, tokens = claimed["text"], claimed["token_ids"]
        checks["schema"] = isinstance(text, str) and isinstance(tokens, list)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        checks["schema"] = False
        measured["error"] = str(error)[:300]
        return Verdict("generation_reexecution", checks, measured)
    checks["model"] = claimed.get("model") == model
    checks["within_max_tokens"] = len(tokens) <= max_tokens
    measured.update(tokens=len(tokens), max_tokens=max_tokens, model=claimed.get("model"))
    checks["reexecution_matches"] = (reference is not None and reference["text"] == text
                                     and reference["token_ids"] == tokens)
    return Verdict("generation_reexecution", checks, measured)
