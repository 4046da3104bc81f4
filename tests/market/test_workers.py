"""The worker registry over HTTP: registration and heartbeats signed with the worker's key
(EIP-712, nonce, expiry); claims are shown apart from verified capabilities."""
from __future__ import annotations

import json
import time

import pytest
from eth_account import Account

from chalicelib.identity.signing import did_for
from proofline.client import ApiError
from tests.conftest import OPERATOR, forged_headers, stage_signed

pytestmark = pytest.mark.stack
CHAIN = 31337
CLAIMS = {"job_classes": ["ffmpeg_hls"], "runtimes": {"ffmpeg": "9.0"}, "codecs": ["h264"],
          "hardware": {"cpu": "x86_64", "cpu_cores": 8, "memory_gb": 16},
          "region": "eu-west-1", "price_per_unit": {"ffmpeg_hls": "0.0004"}}


def identity():
    account = Account.create()
    return account, did_for(account.address, CHAIN)


def register(api, account, did, claims=CLAIMS, **sign):
    body = {"did": did, "claims": claims}
    return api.register_worker(body, stage_signed(account, action="register", did=did,
                                                  body=body, chain_id=CHAIN, **sign))


def test_a_signed_registration_lists_claims_apart_from_verified_capabilities(api):
    account, did = identity()
    worker = register(api, account, did)
    assert worker["did"] == did and worker["address"] == account.address
    assert worker["claims"]["job_classes"] == ["ffmpeg_hls"]
    assert worker["verified"] == {} and worker["routable_for"] == []    # claims are not facts
    assert worker["heartbeat_fresh"] is False
    assert did in {w["did"] for w in api.workers()}
    assert api.worker(did)["claims"]["region"] == "eu-west-1"


def test_heartbeats_make_a_worker_fresh(api):
    account, did = identity()
    register(api, account, did)
    body = {"did": did, "health": {"cpu_free": 0.7, "queue_depth": 1,
                                   "versions": {"ffmpeg": "9.0"}}}
    beat = api.heartbeat(did, body, stage_signed(account, action="heartbeat", did=did,
                                                 body=body, chain_id=CHAIN))
    assert beat["heartbeat_fresh"] is True and beat["health"]["queue_depth"] == 1


def test_heartbeats_are_rate_limited_per_worker_but_a_stop_always_passes(api, ports,
                                                                         monkeypatch):
    account, did = identity()
    register(api, account, did)
    # A long interval, so the test does not depend on how fast this machine answers.
    monkeypatch.setattr(ports, "settings", ports.settings.model_copy(
        update={"heartbeat_min_interval_s": 30}))

    def beat(**health):
        body = {"did": did, "health": health}
        return api.heartbeat(did, body, stage_signed(account, action="heartbeat", did=did,
                                                     body=body))
    beat(queue_depth=0)
    with pytest.raises(ApiError) as flooded:
        beat(queue_depth=1)
    assert (flooded.value.status, flooded.value.reason) == (429, "rate_limited")
    assert 0 < flooded.value.details["retry_after_s"] <= 30
    assert beat(accepting=False)["health"]["accepting"] is False   # stopping is never refused
    monkeypatch.setattr(ports, "settings", ports.settings.model_copy(
        update={"heartbeat_min_interval_s": 0.2}))
    time.sleep(0.3)
    assert beat(accepting=False, queue_depth=2)["health"]["queue_depth"] == 2


def test_forged_replayed_unsigned_and_foreign_requests_are_refused(api):
    account, did = identity()
    mallory, _ = identity()
    body = {"did": did, "claims": CLAIMS}
    with pytest.raises(ApiError) as forged:                  # another key claims the did
        api.register_worker(body, _forge(mallory, did, body))
    assert (forged.value.status, forged.value.reason) == (403, "wrong_signer")
    with pytest.raises(ApiError) as unsigned:
        api.register_worker(body, {})
    assert (unsigned.value.status, unsigned.value.reason) == (401, "missing_signature")
    headers = stage_signed(account, action="register", did=did, body=body, chain_id=CHAIN)
    api.register_worker(body, headers)
    with pytest.raises(ApiError) as replayed:
        api.register_worker(body, headers)
    assert (replayed.value.status, replayed.value.reason) == (401, "replayed_nonce")
    with pytest.raises(ApiError) as expired:
        api.register_worker(body, stage_signed(account, action="register", did=did, body=body,
                                               chain_id=CHAIN, expiry=1_000_000_000))
    assert (expired.value.status, expired.value.reason) == (401, "expired")
    # Worker A cannot beat for worker B.
    other, other_did = identity()
    register(api, other, other_did)
    beat = {"did": other_did, "health": {}}
    with pytest.raises(ApiError) as foreign:
        api.heartbeat(other_did, beat, _forge(account, other_did, beat, action="heartbeat"))
    assert (foreign.value.status, foreign.value.reason) == (403, "wrong_signer")


def test_a_second_registration_and_bad_claims_are_refused(api):
    account, did = identity()
    register(api, account, did)
    with pytest.raises(ApiError) as again:
        register(api, account, did)
    assert (again.value.status, again.value.reason) == (409, "worker_exists")
    fresh, fresh_did = identity()
    with pytest.raises(ApiError) as bad:
        register(api, fresh, fresh_did, claims={**CLAIMS, "region": "mars"})
    assert (bad.value.status, bad.value.reason) == (400, "invalid_claims")


def _forge(account, did, body, action="register"):
    return forged_headers(account, did, body, action=action)


def test_the_cli_lists_and_shows_workers(api, stack, monkeypatch):
    import json

    from click.testing import CliRunner

    from proofline.cli import main
    account, did = identity()
    register(api, account, did)
    runner = CliRunner()
    # Listing every worker is an operator's read: the CLI signs in with the operator's key.
    monkeypatch.setenv("PROOFLINE_OPERATOR_KEY", OPERATOR.key.to_0x_hex())
    listed = runner.invoke(main, ["--api", stack.info.api_url, "workers", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert did in {w["did"] for w in json.loads(listed.stdout)}
    shown = runner.invoke(main, ["--api", stack.info.api_url, "workers", "show", did])
    assert shown.exit_code == 0 and "routable for" in shown.output and "none" in shown.output


def test_jobs_explain_shows_the_ranking_behind_each_assignment(api, stack, clip, monkeypatch):
    import json
    import uuid

    from click.testing import CliRunner
    from conftest import wait_for

    from proofline.cli import main
    slot = api.upload(clip)
    job, _ = api.submit({"kind": "media_probe", "input_uri": slot["input_uri"]},
                        idempotency_key=str(uuid.uuid4()))
    wait_for(api, job["job_id"])
    runner = CliRunner()
    # An unsigned job is the operators': the CLI reads it with an operator's key.
    monkeypatch.setenv("PROOFLINE_CLIENT_KEY", OPERATOR.key.to_0x_hex())
    explained = runner.invoke(main, ["--api", stack.info.api_url, "jobs", "explain",
                                     job["job_id"], "--json"])
    assert explained.exit_code == 0, explained.output
    [first] = json.loads(explained.stdout)
    assert first["attempt"] == 1 and first["chosen"] == ["pool:media"]
    assert first["ranked"][0]["factors"]["capability"] == 1.0
    human = runner.invoke(main, ["--api", stack.info.api_url, "jobs", "explain", job["job_id"]])
    assert "pool:media ranked first" in human.stdout


def test_the_registry_is_read_a_page_at_a_time_and_routing_reads_a_projection(api, ports):
    for _ in range(2):
        register(api, *identity())
    first = api._read("GET", "/workers", params={"limit": 1}).json()
    second = api._read("GET", "/workers", params={"limit": 1, "cursor": first["next"]}).json()
    assert len(first["workers"]) == len(second["workers"]) == 1
    assert first["workers"][0]["did"] != second["workers"][0]["did"]
    assert first["workers"][0]["registered_at"] > second["workers"][0]["registered_at"]
    with pytest.raises(ApiError) as bad:
        api._read("GET", "/workers", params={"limit": 0})
    assert (bad.value.status, bad.value.reason) == (400, "invalid_query")
    # What routing reads of a record is its projection: no challenge history in it.
    did = first["workers"][0]["did"]
    item = ports.workers._db.get_item(TableName=ports.settings.jobs_table,
                                      Key={"pk": {"S": f"WORKER#{did}"}, "sk": {"S": "JOB"}})
    routed = json.loads(item["Item"]["route"]["S"])
    assert routed["did"] == did and "challenges" not in routed
    assert len(item["Item"]["route"]["S"]) < len(item["Item"]["doc"]["S"])
