"""Submit and cancel signed by the client's did:pkh key: the signer becomes the job's client,
only that client may cancel it, and a stage that refuses unsigned requests refuses them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from eth_account import Account

from chalicelib.identity.signing import Domain, did_for, sign_request
from proofline.client import Api, ApiError
from tests.conftest import INTAKE, OPERATOR, drop, stage_signed, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture
def client(stack):
    account = Account.create()
    did = did_for(account.address, stack.info.chain_id)
    return Api(stack.info.api_url, signer=(account, did)), account, did


def probe_manifest(api, clip) -> dict:
    slot = api.upload(clip)
    return {"kind": "media_probe", "input_uri": slot["input_uri"],
            "input_hash": slot["input_hash"], "job_id": f"job-{uuid.uuid4().hex[:12]}"}


def test_a_signed_submission_makes_the_signer_the_client_and_only_it_may_cancel(
        api, client, clip):
    signed_api, _, did = client
    job, created = signed_api.submit(probe_manifest(signed_api, clip))
    assert created and job["manifest"]["client_did"] == did
    with pytest.raises(ApiError) as unsigned:
        api.cancel(job["job_id"])                              # no signature at all
    assert (unsigned.value.status, unsigned.value.reason) == (401, "missing_signature")
    stranger = Account.create()
    with pytest.raises(ApiError) as foreign:
        Api(api.base_url, signer=(stranger, did_for(stranger.address, int(did.split(":")[3])))
            ).cancel(job["job_id"])
    assert (foreign.value.status, foreign.value.reason) == (403, "not_your_job")
    try:
        cancelled = signed_api.cancel(job["job_id"])
    except ApiError as error:                   # it may have run already; then it is too late
        assert error.reason == "illegal_transition"
    else:
        assert cancelled["state"] == "cancelled"


def test_a_manifest_naming_another_client_or_a_replayed_signature_is_refused(
        api, client, clip, stack):
    signed_api, account, did = client
    other = did_for(Account.create().address, stack.info.chain_id)
    manifest = {**probe_manifest(signed_api, clip), "client_did": other}
    headers = stage_signed(account, action="submit", did=did, body=manifest,
                           chain_id=stack.info.chain_id)
    with pytest.raises(ApiError) as impersonating:
        api._request("POST", "/jobs", json=manifest, headers=headers)
    assert (impersonating.value.status, impersonating.value.reason) == (403, "wrong_signer")

    manifest = probe_manifest(signed_api, clip)
    headers = stage_signed(account, action="submit", did=did, body=manifest,
                           chain_id=stack.info.chain_id)
    api._request("POST", "/jobs", json=manifest, headers=headers)
    with pytest.raises(ApiError) as replayed:
        api._request("POST", "/jobs", json=manifest, headers=headers)
    assert (replayed.value.status, replayed.value.reason) == (401, "replayed_nonce")
    tampered = {**manifest, "max_attempts": 3}
    with pytest.raises(ApiError) as changed:
        api._request("POST", "/jobs", json=tampered, headers=stage_signed(
            account, action="submit", did=did, body=manifest, chain_id=stack.info.chain_id))
    assert (changed.value.status, changed.value.reason) == (403, "wrong_signer")


def test_a_stage_that_refuses_unsigned_requests_refuses_them(api, client, clip, monkeypatch):
    from chalicelib import ports
    signed_api, _, did = client
    anonymous, mine = probe_manifest(api, clip), probe_manifest(signed_api, clip)
    p = ports.default()
    monkeypatch.setattr(p, "settings", p.settings.model_copy(update={"allow_unsigned": False}))
    with pytest.raises(ApiError) as unsigned:
        api.submit(anonymous)
    assert (unsigned.value.status, unsigned.value.reason) == (401, "missing_signature")
    job, created = signed_api.submit(mine)
    assert created and job["manifest"]["client_did"] == did


def test_the_cli_signs_with_the_identity_it_is_given(api, stack, clip, tmp_path):
    from proofline import identity
    created = identity.create_identity(tmp_path / "me.json", "pw", chain_id=stack.info.chain_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROOFLINE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "proofline.cli", "--api", stack.info.api_url, "--sign",
         "--keystore", str(tmp_path / "me.json"), "submit", "--kind", "media_probe",
         "--input", str(clip), "--json"],
        env={**env, "PROOFLINE_PASSPHRASE": "pw"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["manifest"]["client_did"] == created.did


def signed_by(api, account) -> Api:
    return Api(api.base_url, signer=(account, did_for(account.address, 31337)))


def test_a_dropped_files_job_is_the_operators_to_cancel(api, aws, clip):
    """A file dropped under no mapped prefix (here: outside intake/, with a sidecar)."""
    key = f"unmapped/{uuid.uuid4().hex}.mp4"
    aws.s3.put_object(Bucket=INTAKE, Key=key + ".job.json", Body=b'{"kind": "media_probe"}')
    job_id, _ = drop(aws, key, path=clip)
    wait_for(api, job_id, states={"requested", "assigned", "running", "submitted",
                                  "verifying", "verified", "settled"}, timeout=60)
    with pytest.raises(ApiError) as anonymous:
        api.cancel(job_id)
    assert (anonymous.value.status, anonymous.value.reason) == (401, "missing_signature")
    with pytest.raises(ApiError) as stranger:
        signed_by(api, Account.create()).cancel(job_id)
    assert (stranger.value.status, stranger.value.reason) == (403, "operator_only")
    try:
        assert signed_by(api, OPERATOR).cancel(job_id)["state"] == "cancelled"
    except ApiError as error:                   # it may have finished: then it is too late
        assert error.reason == "illegal_transition"


def test_a_stranger_cannot_cancel_a_workers_challenge_and_an_operators_cancel_is_retried(
        api, stack, ports):
    account = Account.create()
    did = did_for(account.address, stack.info.chain_id)
    body = {"did": did, "claims": {"job_classes": ["embed_batch"], "region": "us-east-1",
                                   "price_per_unit": {"embed_batch": "0.001"}}}
    api.register_worker(body, stage_signed(account, action="register", did=did, body=body,
                                           chain_id=stack.info.chain_id))
    challenge = next(j for j in ports.store.list(None, 200) if j.challenge == did)
    with pytest.raises(ApiError) as stranger:
        signed_by(api, Account.create()).cancel(challenge.job_id)
    assert (stranger.value.status, stranger.value.reason) == (403, "operator_only")
    assert signed_by(api, OPERATOR).cancel(challenge.job_id)["state"] == "cancelled"
    recorded = wait_until_recorded(api, did)
    assert recorded["state"] == "failed" and recorded["retryable"] is True


def wait_until_recorded(api, did, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        challenge = api.worker(did)["challenges"]["embed_batch"]
        if challenge["state"] != "pending":
            return challenge
        time.sleep(0.3)
    raise AssertionError(f"the challenge of {did} was never recorded")


@pytest.mark.parametrize("elsewhere", [
    {"stage_name": "proofline-prod"},                         # another deployment, same chain
    {"contract": "0x" + "11" * 20},                           # another escrow
    {"bare": True},                                           # no deployment named at all
])
def test_a_signature_made_for_another_deployment_is_refused(client, clip, stack, elsewhere):
    from chalicelib import callers, ports
    signed_api, account, did = client
    manifest = probe_manifest(signed_api, clip)
    here = callers.signing_domain(ports.default(), did)
    domain = (Domain(here.chain_id) if elsewhere.get("bare") else Domain.of_stage(
        here.chain_id, elsewhere.get("stage_name", ports.default().settings.session_domain),
        elsewhere.get("contract", here.contract)))
    headers = sign_request(account, action="submit", did=did, body=manifest, domain=domain)
    with pytest.raises(ApiError) as replayed:
        signed_api._request("POST", "/jobs", json=manifest, headers=headers)
    assert (replayed.value.status, replayed.value.reason) == (403, "wrong_signer")
    assert here.salt and here.contract == stack.info.escrow_address


def test_a_client_cannot_squat_another_clients_job_name(stack, clip):
    """Mallory submits first under the name Alice will use: two jobs, neither in the way."""
    alice, mallory = (Api(stack.info.api_url, signer=(a, did_for(a.address, stack.info.chain_id)))
                      for a in (Account.create(), Account.create()))
    name = f"invoice-{uuid.uuid4().hex[:8]}"
    squatted, _ = mallory.submit({**probe_manifest(mallory, clip), "job_id": name})
    mine, created = alice.submit({**probe_manifest(alice, clip), "job_id": name})
    assert created and mine["job_id"] != squatted["job_id"]
    assert mine["manifest"]["job_id"] == squatted["manifest"]["job_id"] == name
    assert mine["manifest"]["client_did"] == alice.signer[1]
    again, created = alice.submit({**probe_manifest(alice, clip), "job_id": name})
    assert not created and again["job_id"] == mine["job_id"]     # a retry, not a new job


@pytest.mark.parametrize("named", ["did:pkh:eip155:0:0x" + "00" * 20,
                                   "did:pkh:eip155:31337:0x" + "aB" * 20])   # bad checksum
def test_a_signed_manifest_naming_an_impossible_client_is_a_400(client, clip, named):
    signed_api, _, _ = client
    with pytest.raises(ApiError) as refused:
        signed_api.submit({**probe_manifest(signed_api, clip), "client_did": named})
    assert (refused.value.status, refused.value.reason) == (400, "invalid_value")
