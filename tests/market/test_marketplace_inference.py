"""Inference jobs on marketplace workers: leased whole after an embedding challenge, their
inputs redacted for untrusted hands, re-executed on the trusted pool before anything
counts, and private jobs kept off untrusted workers altogether."""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid

import numpy as np
import pytest
import requests
from eth_account import Account

from chalicelib.identity.signing import did_for
from proofline.client import ApiError
from proofline.worker_agent import Agent
from tests.conftest import challenge_passed, wait_for

pytestmark = pytest.mark.stack
SECRET_MAIL = "alice.secret@example.com"


class Recording(Agent):
    """Keeps every input it was given, to show what reached it."""

    def run_model(self, lease):
        self.seen = getattr(self, "seen", []) + [(lease["job_id"], lease["inputs"])]
        return super().run_model(lease)


class Perturbing(Recording):
    """Passes its challenge, then returns vectors nudged off the model's (every row, or
    only the last: a sample would likely miss that)."""
    only_last = False

    def run_model(self, lease):
        body, execution = super().run_model(lease)
        if not challenge_passed(self, "embed_batch"):
            return body, execution
        vectors = np.load(io.BytesIO(body))
        noise = np.random.default_rng(1).normal(0, 0.08, vectors.shape)
        if self.only_last:
            noise[:-1] = 0
        noisy = vectors + noise
        noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        out = io.BytesIO()
        np.save(out, noisy, allow_pickle=False)
        return out.getvalue(), execution


def claims(price: str) -> dict:
    return {"job_classes": ["embed_batch"], "region": "us-east-1",
            "price_per_unit": {"embed_batch": price},
            "models_cached": ["sentence-transformers/all-MiniLM-L6-v2"]}


def start(api, chain_id, kind, price):
    account = Account.create()
    agent = kind(api=api, account=account, did=did_for(account.address, chain_id),
                 claims=claims(price), heartbeat_every_s=1, poll_s=0.3, log=lambda _: None)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def wait_verified(api, did, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            worker = api.worker(did)
        except ApiError:                     # not registered yet
            time.sleep(0.3)
            continue
        if worker["routable_for"] == ["embed_batch"]:
            return worker
        challenge = worker.get("challenges", {}).get("embed_batch")
        assert not challenge or challenge["state"] != "failed", challenge
        time.sleep(0.3)
    raise AssertionError(f"{did} was not verified: {api.worker(did)}")


@pytest.fixture(scope="module")
def inference_market(stack, api):
    honest, t1 = start(api, stack.info.chain_id, Recording, "0.0001")
    cheat, t2 = start(api, stack.info.chain_id, Perturbing, "0.00001")
    try:
        for agent in (honest, cheat):
            wait_verified(api, agent.did)
        yield honest, cheat
    finally:
        for agent, thread in ((honest, t1), (cheat, t2)):
            agent.stop()
            thread.join(timeout=60)


def test_a_verified_worker_gets_the_model_token_and_not_just_the_class(api, inference_market):
    honest, _ = inference_market
    verified = api.worker(honest.did)["verified"]["embed_batch"]
    assert verified["tokens"] == ["model:sentence-transformers/all-MiniLM-L6-v2"]
    assert api.job(verified["challenge_job"])["state"] == "settled"


def test_perturbed_vectors_are_caught_and_the_job_is_redone_by_an_honest_worker(
        api, inference_market):
    honest, cheat = inference_market
    before = api.worker(cheat.did)["reputation"]["embed_batch"]["score"]
    texts = ["Write to " + SECRET_MAIL + " about the invoice.", "A cat sits on the mat.",
             "Verification comes before payment."]
    job, _ = api.submit({"kind": "embed_batch", "texts": texts},
                        idempotency_key=str(uuid.uuid4()))
    final = wait_for(api, job["job_id"], timeout=180)
    events = api.events(job["job_id"])["events"]
    assert final["state"] == "settled", [(e["type"], e["data"].get("reason")) for e in events]
    offered = [e["data"]["worker"] for e in events if e["type"] == "job.offered"]
    assert offered == [cheat.did, honest.did]                  # cheapest first, then not again
    [rejected] = [e for e in events if e["type"] == "validation.failed"]
    assert rejected["data"]["checks"]["reexecution_matches"] is False
    assert api.worker(cheat.did)["reputation"]["embed_batch"]["score"] < before
    assert final["attempts"][-1]["worker"] == honest.did

    # What reached the untrusted workers was redacted; the timeline keeps only its hash.
    given = [inputs["texts"] for job_id, inputs in honest.seen if job_id == job["job_id"]]
    assert given and all(SECRET_MAIL not in t for t in given[0])
    assert given[0][0] == "Write to [redacted] about the invoice."
    assert all(SECRET_MAIL not in str(e["data"]) for e in events)
    assert all("input_sha256" in e["data"] for e in events if e["type"] == "job.offered")


def test_private_jobs_never_reach_an_untrusted_worker(api, inference_market):
    honest, cheat = inference_market
    job, _ = api.submit({"kind": "embed_batch", "texts": ["patient record 4411: stable"],
                         "data_sensitivity": "private"}, idempotency_key=str(uuid.uuid4()))
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled"
    events = api.events(job["job_id"])["events"]
    assert not [e for e in events if e["type"] == "job.offered"]
    assert {a["worker"] for a in final["attempts"]} == {"pool:inference"}
    for agent in (honest, cheat):
        assert all(job_id != job["job_id"] for job_id, _ in getattr(agent, "seen", []))


def test_redundancy_two_reruns_every_row_and_catches_a_single_bad_vector(
        api, stack, inference_market):
    honest, _ = inference_market
    subtle, thread = start(api, stack.info.chain_id, Perturbing, "0.000001")
    subtle.only_last = True
    try:
        wait_verified(api, subtle.did)
        texts = [f"Sentence number {i} about verifiable compute." for i in range(20)]
        job, _ = api.submit({"kind": "embed_batch", "texts": texts, "redundancy": 2},
                            idempotency_key=str(uuid.uuid4()))
        final = wait_for(api, job["job_id"], timeout=180)
    finally:
        subtle.stop()
        thread.join(timeout=60)
    events = api.events(job["job_id"])["events"]
    assert final["state"] == "settled", [(e["type"], e["data"].get("reason")) for e in events]
    offered = [e["data"]["worker"] for e in events if e["type"] == "job.offered"]
    assert offered[0] == subtle.did
    failed = [e for e in events if e["type"] == "validation.failed"]
    assert failed[0]["data"]["measured"]["rows_reexecuted"] == 20     # all of them, not 2
    assert failed[0]["data"]["checks"]["reexecution_matches"] is False
    assert final["attempts"][-1]["worker"] == honest.did
    reputation = api.worker(subtle.did)["reputation"]["embed_batch"]
    assert reputation["validation_failures"] == 1 and reputation["completions"] == 1


class Slow(Recording):
    """Takes longer than one lease, heartbeating all along."""

    def run_model(self, lease):
        if challenge_passed(self, "embed_batch"):
            time.sleep(int(os.environ["PROOFLINE_WORKER_LEASE_SECONDS"]) + 3)
        return super().run_model(lease)


def test_heartbeats_keep_a_long_lease_alive(api, stack, inference_market):
    slow, thread = start(api, stack.info.chain_id, Slow, "0.0000005")
    try:
        wait_verified(api, slow.did)
        job, _ = api.submit({"kind": "embed_batch", "texts": ["slow but alive"]},
                            idempotency_key=str(uuid.uuid4()))
        final = wait_for(api, job["job_id"], timeout=120)
    finally:
        slow.stop()
        thread.join(timeout=60)
    events = api.events(job["job_id"])["events"]
    assert final["state"] == "settled", [(e["type"], e["data"].get("reason")) for e in events]
    assert [a["worker"] for a in final["attempts"]] == [slow.did]     # one attempt, its own
    assert any(e["type"] == "lease.extended" for e in events)          # past one lease


class Vanishing(Recording):
    """Leases a client's job, then goes silent mid-run: no heartbeat, no result."""

    def run_model(self, lease):
        if not challenge_passed(self, "embed_batch"):
            return super().run_model(lease)
        self.seen = getattr(self, "seen", []) + [(lease["job_id"], lease["inputs"])]
        self._stop.set()                      # the heartbeat thread ends with it
        time.sleep(30)
        raise RuntimeError("gone")


def test_a_worker_that_goes_quiet_loses_its_lease_and_the_job_finishes_elsewhere(
        api, stack, inference_market):
    honest, cheat = inference_market
    cheat.stop()                              # leave the quiet one as the cheapest
    gone, thread = start(api, stack.info.chain_id, Vanishing, "0.0000001")
    wait_verified(api, gone.did)
    job, _ = api.submit({"kind": "embed_batch", "texts": ["one", "two"]},
                        idempotency_key=str(uuid.uuid4()))
    final = wait_for(api, job["job_id"], timeout=120)
    events = api.events(job["job_id"])["events"]
    assert final["state"] == "settled", [(e["type"], e["data"].get("reason")) for e in events]
    leased = [e["data"]["worker"] for e in events if e["type"] == "job.leased"]
    assert leased[0] == gone.did and leased[-1] != gone.did
    assert any(e["type"] == "lease.expired" for e in events)
    assert api.worker(gone.did)["reputation"]["embed_batch"]["timeouts"] == 1


class Tampering(Recording):
    """Hands in honest vectors, then rewrites its upload through the lease's URL, which
    stays valid after the result is in (as a presigned PUT does)."""

    def infer(self, lease):
        super().infer(lease)
        if challenge_passed(self, "embed_batch"):
            fake = np.random.default_rng(7).normal(size=(len(lease["inputs"]["texts"]), 384))
            fake = (fake / np.linalg.norm(fake, axis=1, keepdims=True)).astype(np.float32)
            buffer = io.BytesIO()
            np.save(buffer, fake, allow_pickle=False)
            requests.put(lease["output"]["url"], data=buffer.getvalue(),
                         timeout=60).raise_for_status()
            self.tampered = getattr(self, "tampered", []) + [lease["job_id"]]


def test_a_worker_that_rewrites_its_upload_after_submitting_changes_nothing_promoted(
        api, stack, inference_market):
    tamperer, thread = start(api, stack.info.chain_id, Tampering, "0.000000001")
    try:
        wait_verified(api, tamperer.did)
        job, _ = api.submit({"kind": "embed_batch", "texts": [f"row {i}" for i in range(8)]},
                            idempotency_key=str(uuid.uuid4()))
        final = wait_for(api, job["job_id"], timeout=120)
    finally:
        tamperer.stop()
        thread.join(timeout=60)
    assert job["job_id"] in getattr(tamperer, "tampered", [])       # it did rewrite the upload
    assert final["state"] == "settled" and final["attempts"][-1]["worker"] == tamperer.did
    [output] = final["outputs"]
    delivered = requests.get(output["download_url"], timeout=60).content
    assert "sha256:" + hashlib.sha256(delivered).hexdigest() == output["sha256"]
    vectors = np.load(io.BytesIO(delivered), allow_pickle=False)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    submitted = [e for e in api.events(job["job_id"])["events"] if e["type"] == "output.uploaded"]
    assert submitted[-1]["data"]["sha256"] == output["sha256"]        # what it committed to
    assert "/evidence/" in submitted[-1]["data"]["uri"]                # frozen out of reach


class Broken(Recording):
    """Passes its challenge, then cannot run the model: it gives the job back, and keeps
    sending heartbeats (which would otherwise keep its lease alive)."""

    def run_model(self, lease):
        if challenge_passed(self, "embed_batch"):
            raise RuntimeError("CUDA error: out of memory")
        return super().run_model(lease)


def test_a_job_the_worker_cannot_run_is_given_back_and_finished_elsewhere(api, stack,
                                                                          inference_market):
    broken, thread = start(api, stack.info.chain_id, Broken, "0.000001")
    try:
        wait_verified(api, broken.did)
        job, _ = api.submit({"kind": "embed_batch", "texts": ["one", "two"]},
                            idempotency_key=str(uuid.uuid4()))
        final = wait_for(api, job["job_id"], timeout=120)
    finally:
        broken.stop()
        thread.join(timeout=60)
    assert final["state"] == "settled"
    [given_back] = [a for a in final["attempts"] if a["worker"] == broken.did]
    assert (given_back["state"], given_back["reason"]) == ("failed", "lease_released")
    assert final["attempts"][-1]["worker"] != broken.did
    assert broken.stats.released == 1
