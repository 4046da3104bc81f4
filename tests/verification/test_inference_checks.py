"""Inference verification rules without a model: each check fails when its value is off."""
import io
import json

import numpy as np
import pytest

from chalicelib.verification.inference import embeddings, generation

SHA = "sha256:" + "a" * 64


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def unit(rows=3, seed=0):
    v = np.random.default_rng(seed).normal(size=(rows, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def judge(vectors, *, reference=None, rows=(0, 2), count=3, actual=SHA):
    data = vectors if isinstance(vectors, bytes) else npy(vectors)
    ref = unit()[list(rows)] if reference is None else reference
    return embeddings(data=data, reported_sha256=SHA, actual_sha256=actual, expected_count=count,
                      rows=list(rows), reference=ref, cosine_min=0.999)


def test_vectors_that_match_the_reexecution_pass():
    verdict = judge(unit())
    assert verdict.passed and verdict.measured["rows_reexecuted"] == 2


@pytest.mark.parametrize("vectors, check", [
    (unit()[:, :128], "schema"),
    (unit(rows=2), "schema"),
    (unit().astype(np.float64), "schema"),
    (b"\x93NUMPY garbage", "schema"),
    (np.where(np.arange(384) == 0, np.nan, unit()).astype(np.float32), "finite"),
    (unit() * 2, "unit_norm"),
    (unit(seed=1), "reexecution_matches"),
])
def test_each_violation_fails_its_check(vectors, check):
    verdict = judge(vectors)
    assert not verdict.passed and verdict.checks[check] is False


def test_no_pickles_are_ever_loaded():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    assert judge(buffer.getvalue()).checks["schema"] is False


def generated(text="hi there", tokens=(5, 6), model="m") -> bytes:
    return json.dumps({"text": text, "token_ids": list(tokens), "model": model}).encode()


def test_generation_must_equal_the_reexecution_and_respect_limits():
    reference = {"text": "hi there", "token_ids": [5, 6]}
    ok = generation(data=generated(), reported_sha256=SHA, actual_sha256=SHA, max_tokens=2,
                    model="m", reference=reference)
    assert ok.passed
    for data, max_tokens, check in [(generated(text="other"), 2, "reexecution_matches"),
                                    (generated(), 1, "within_max_tokens"),
                                    (generated(model="n"), 2, "model"),
                                    (b"\xff\xfe not utf-8", 2, "schema")]:
        verdict = generation(data=data, reported_sha256=SHA, actual_sha256=SHA,
                             max_tokens=max_tokens, model="m", reference=reference)
        assert verdict.checks[check] is False, check
