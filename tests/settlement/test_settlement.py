"""Escrow jobs on the real stack and chain: funded before they run, released only after
verification and only once, refunded when they fail — including across an RPC outage."""
import dataclasses
import json
import time
import uuid

import pytest
from conftest import event_types, wait_for
from eth_account import Account
from web3 import Web3

from chalicelib.jobs import attempts
from chalicelib.jobs import lifecycle as jobs
from chalicelib.models import Manifest, State
from chalicelib.settlement import payments
from chalicelib.settlement.chain import Escrow, EscrowState
from chalicelib.settlement.escrow import job_key_bytes

pytestmark = pytest.mark.stack
PRICE = "0.01"
WEI = 10**16


@pytest.fixture(scope="module")
def chain(stack):
    keys = stack.info.dev_keys
    w3 = Web3(Web3.HTTPProvider(stack.info.rpc_url))
    return dataclasses.make_dataclass("Chain", ["w3", "escrow", "client", "pool"])(
        w3, Escrow(w3, stack.info.escrow_address), Account.from_key(keys["client"]),
        keys["pool_address"])


@pytest.fixture(scope="module")
def stored_clip(api, clip):
    return api.upload(clip)


def escrow_job(api, stored_clip, **extra):
    job, created = api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                               "input_hash": stored_clip["input_hash"],
                               "payment_policy": "escrow_before_start", "max_price": PRICE,
                               **extra}, idempotency_key=str(uuid.uuid4()))
    assert created and job["state"] == "requested" and job["escrow"]["amount"] == WEI
    return job


def fund(chain, job, amount=WEI):
    key = bytes.fromhex(job["escrow"]["job_key"][2:])
    deadline = chain.w3.eth.get_block("latest")["timestamp"] + 3600
    return chain.escrow.fund(chain.client, key, amount, deadline)


def recorded(api, job, event_type, timeout=15) -> bool:
    """Whether `event_type` reaches the job's timeline within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while event_type not in event_types(api, job["job_id"]):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def escrow_state(chain, job, *, until, timeout=30):
    """The job's escrow state once it is `until`, or whatever it is after `timeout`."""
    key = bytes.fromhex(job["escrow"]["job_key"][2:])
    deadline = time.monotonic() + timeout
    while chain.escrow.job(key).state != until and time.monotonic() < deadline:
        time.sleep(0.3)
    return chain.escrow.job(key).state


def test_an_escrow_job_waits_for_funding_runs_and_pays_the_worker(api, chain, stored_clip):
    job = escrow_job(api, stored_clip)
    time.sleep(2)
    assert api.job(job["job_id"])["state"] == "requested"          # not routed unfunded
    before = chain.w3.eth.get_balance(chain.pool)
    fund(chain, job)
    final = wait_for(api, job["job_id"], timeout=90)
    assert final["state"] == "settled", api.events(job["job_id"])
    types = event_types(api, job["job_id"])
    assert types.index("escrow.funded") < types.index("job.assigned") < types.index("validation.passed") \
        < types.index("settlement.released")
    released = [e for e in api.events(job["job_id"])["events"] if e["type"] == "settlement.released"][0]
    assert released["data"]["gas_used"] > 0 and released["data"]["outputs"] == [final["outputs"][0]["sha256"]]
    assert chain.w3.eth.get_balance(chain.pool) - before == WEI
    assert chain.escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:])).state == EscrowState.RELEASED


def test_duplicate_release_requests_pay_once(api, chain, stored_clip, ports, aws, stack):
    job = escrow_job(api, stored_clip)
    fund(chain, job)
    wait_for(api, job["job_id"], timeout=90)
    before = chain.w3.eth.get_balance(chain.pool)
    url = aws.sqs.get_queue_url(QueueName=ports.settings.settlement_queue)["QueueUrl"]
    for _ in range(3):
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
            {"action": "release", "job_id": job["job_id"]}))
    assert payments.settle(ports, "release", job["job_id"]) == "already settled"
    time.sleep(3)
    assert chain.w3.eth.get_balance(chain.pool) == before
    assert event_types(api, job["job_id"]).count("settlement.released") == 1


def test_a_failed_escrow_job_is_refunded(api, chain, tmp_path):
    garbage = tmp_path / "not-media.mp4"
    garbage.write_bytes(b"\x00garbage" * 512)
    job = escrow_job(api, api.upload(garbage))                  # no probe can read it
    fund(chain, job)
    final = wait_for(api, job["job_id"], timeout=90)
    assert final["state"] == "failed" and final["reason"] == "media_unreadable"
    assert escrow_state(chain, job, until=EscrowState.REFUNDED) == EscrowState.REFUNDED
    assert recorded(api, job, "settlement.refunded")      # written once the receipt is in


def test_funding_that_arrives_after_cancel_is_refunded(api, chain, stored_clip):
    job = escrow_job(api, stored_clip)
    assert api.cancel(job["job_id"])["state"] == "cancelled"
    fund(chain, job)
    assert escrow_state(chain, job, until=EscrowState.REFUNDED) == EscrowState.REFUNDED
    assert api.job(job["job_id"])["state"] == "cancelled"


def test_underfunding_fails_the_job_and_returns_the_money(api, chain, stored_clip):
    job = escrow_job(api, stored_clip)
    fund(chain, job, amount=WEI - 1)
    final = wait_for(api, job["job_id"], timeout=60)
    assert final["state"] == "failed" and final["reason"] == "funding_insufficient"
    assert escrow_state(chain, job, until=EscrowState.REFUNDED) == EscrowState.REFUNDED


class RecordingQueues:
    def __init__(self):
        self.sent = []

    def send(self, queue, message):
        self.sent.append((queue, json.loads(json.dumps(message))))


def verified_but_unpaid(ports, chain, stored_clip):
    """An escrow job taken to `verified` by hand, its settlement message held back."""
    held = dataclasses.replace(ports, queues=RecordingQueues())
    manifest = Manifest(kind="media_probe", input_uri=stored_clip["input_uri"],
                        input_hash=stored_clip["input_hash"],
                        payment_policy="escrow_before_start", max_price=PRICE)
    job, _ = jobs.accept(held, manifest, job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    key = job_key_bytes(job)
    # The stack's chain follower finds jobs by their escrow alias; without it the follower
    # cannot take this job's funding before the test does (it runs every second).
    from chalicelib import aws
    aws.client("dynamodb").delete_item(
        TableName=ports.settings.jobs_table,
        Key={"pk": {"S": f"ALIAS#escrow:{job.escrow.job_key}"}, "sk": {"S": "JOB"}})
    receipt = chain.escrow.fund(chain.client, key, WEI,
                                chain.w3.eth.get_block("latest")["timestamp"] + 3600)
    log = chain.escrow.contract.events.Funded().get_logs(from_block=receipt.block,
                                                         to_block=receipt.block)[0]
    assigned = payments.on_funded(held, job, log)
    import tempfile
    from pathlib import Path

    from media_worker.handler import probe_input
    running = attempts.start(held, assigned, 1, "pool:media", redelivered=False)
    with tempfile.TemporaryDirectory() as tmp:
        result = probe_input(held, running, Path(tmp))
    verified = attempts.verify(held, attempts.submit(held, running, result), result)
    assert verified.state == State.VERIFIED
    assert ("settlement", {"action": "release", "job_id": job.job_id}) in held.queues.sent
    return held, verified


def test_the_rpc_down_then_back_pays_exactly_once(ports, chain, stored_clip):
    held, job = verified_but_unpaid(ports, chain, stored_clip)
    dead = Escrow(Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 1})),
                  chain.escrow.address)
    offline = dataclasses.replace(held, chain=dataclasses.replace(held.chain, escrow=dead))
    with pytest.raises(OSError):                            # after the provider's retries
        payments.settle(offline, "release", job.job_id)
    assert chain.escrow.job(job_key_bytes(job)).state == EscrowState.FUNDED    # nothing reached the chain
    before = chain.w3.eth.get_balance(chain.pool)
    assert payments.settle(held, "release", job.job_id) == "released"
    assert payments.settle(held, "release", job.job_id) == "already settled"
    assert chain.w3.eth.get_balance(chain.pool) - before == WEI
    assert held.store.get(job.job_id).state == State.SETTLED


def test_no_release_without_validation_of_the_exact_outputs(ports, chain, stored_clip):
    held, job = verified_but_unpaid(ports, chain, stored_clip)
    tampered = job.model_copy(update={
        "version": job.version + 1,
        "outputs": [job.outputs[0].model_copy(update={"sha256": "sha256:" + "00" * 32})]})
    held.store.commit(job, tampered)                      # a bug swaps what is paid for
    assert payments.settle(held, "release", job.job_id) == "blocked"
    assert payments.settle(held, "release", job.job_id) == "blocked"
    assert chain.escrow.job(job_key_bytes(job)).state != EscrowState.RELEASED
    view = held.store.view(job.job_id)
    assert view.job.state == State.VERIFIED
    assert [e.type for e in view.events].count("settlement.blocked") == 1
    [row] = [r for r in payments.reconcile(held) if r["job_id"] == job.job_id]
    assert row["kind"] == "release_blocked" and row["repair"] is None


def test_reconcile_finds_planted_drift_and_repairs_what_is_safe(ports, chain, stored_clip, api):
    held, job = verified_but_unpaid(ports, chain, stored_clip)    # verified, never released
    rows = {r["job_id"]: r for r in payments.reconcile(held)}
    assert rows[job.job_id]["kind"] == "verified_not_released"
    assert rows[job.job_id]["repair"] == "release"
    # The stack's scheduled reconciliation re-sends the release; the handler pays it.
    assert wait_for(api, job.job_id, timeout=60)["state"] == "settled"
    assert chain.escrow.job(job_key_bytes(job)).state == EscrowState.RELEASED
    assert job.job_id not in {r["job_id"] for r in api.settlement_drift()}



# -- ERC-20 payment and dispute windows -------------------------------------------------------
def token_balance(chain, token, account):
    from chalicelib.settlement.chain import artifact
    erc20 = chain.w3.eth.contract(address=token, abi=artifact("TestToken")["abi"])
    return erc20.functions.balanceOf(account).call()


def test_an_erc20_priced_job_is_funded_and_paid_in_the_token(api, chain, stack, stored_clip):
    from proofline.devstack import TEST_TOKEN
    job, _ = api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                         "payment_policy": "escrow_before_start", "max_price": "2.5",
                         "payment_token": TEST_TOKEN}, idempotency_key=str(uuid.uuid4()))
    token = stack.info.token_address
    assert job["escrow"]["token"].lower() == token.lower()
    assert job["escrow"]["amount"] == 2_500_000 and job["escrow"]["decimals"] == 6  # exact units
    before = token_balance(chain, token, chain.pool)
    chain.escrow.fund(chain.client, bytes.fromhex(job["escrow"]["job_key"][2:]), 2_500_000,
                      chain.w3.eth.get_block("latest")["timestamp"] + 3600, token=token)
    assert wait_for(api, job["job_id"], timeout=90)["state"] == "settled"
    assert token_balance(chain, token, chain.pool) - before == 2_500_000


def test_a_price_in_a_token_the_stage_does_not_accept_is_refused(api, stored_clip):
    from proofline.client import ApiError
    with pytest.raises(ApiError) as refused:
        api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                    "payment_policy": "escrow_before_start", "max_price": "1",
                    "payment_token": "DOGE"}, idempotency_key=str(uuid.uuid4()))
    assert refused.value.status == 400 and refused.value.reason == "unknown_payment_token"


def test_a_job_funded_with_too_little_of_the_token_is_refunded(api, chain, stack, stored_clip):
    from proofline.devstack import TEST_TOKEN
    job, _ = api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                         "payment_policy": "escrow_before_start", "max_price": "1",
                         "payment_token": TEST_TOKEN}, idempotency_key=str(uuid.uuid4()))
    token = stack.info.token_address
    before = token_balance(chain, token, chain.client.address)
    chain.escrow.fund(chain.client, bytes.fromhex(job["escrow"]["job_key"][2:]), 999_999,
                      chain.w3.eth.get_block("latest")["timestamp"] + 3600, token=token)
    final = wait_for(api, job["job_id"], timeout=60)
    assert final["state"] == "failed" and final["reason"] == "funding_insufficient"
    assert escrow_state(chain, job, until=EscrowState.REFUNDED) == EscrowState.REFUNDED
    assert token_balance(chain, token, chain.client.address) == before


@pytest.fixture
def dispute_window(stack, chain):
    """Jobs funded inside this fixture carry the given dispute window (the contract copies
    its window into each job when it is funded)."""
    admin = stack.anvil.accounts[0]

    def set_window(seconds):
        chain.escrow.send(admin, "setDisputeWindow", seconds)
    yield set_window
    set_window(0)


def funded_with_window(api, chain, stored_clip, dispute_window, seconds):
    job = escrow_job(api, stored_clip)
    dispute_window(seconds)
    fund(chain, job)
    dispute_window(0)
    wait_for(api, job["job_id"], states={"verified", "settled", "failed"}, timeout=60)
    return job


def test_a_dispute_window_holds_the_payment_then_it_is_finalized(api, chain, stored_clip,
                                                                 dispute_window):
    before = chain.w3.eth.get_balance(chain.pool)
    job = funded_with_window(api, chain, stored_clip, dispute_window, 3)
    assert api.job(job["job_id"])["state"] == "verified"      # paid only after the window
    assert escrow_state(chain, job, until=EscrowState.VERIFIED) == EscrowState.VERIFIED
    assert chain.w3.eth.get_balance(chain.pool) == before
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled"
    types = event_types(api, job["job_id"])
    assert types.index("settlement.scheduled") < types.index("settlement.released")
    assert chain.w3.eth.get_balance(chain.pool) - before == WEI
    assert chain.escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:])).state == EscrowState.RELEASED


def test_a_disputed_job_waits_for_the_arbiter_and_settles_on_the_split(api, chain, stack,
                                                                       stored_clip, dispute_window):
    job = funded_with_window(api, chain, stored_clip, dispute_window, 600)
    key = bytes.fromhex(job["escrow"]["job_key"][2:])
    assert escrow_state(chain, job, until=EscrowState.VERIFIED) == EscrowState.VERIFIED
    chain.escrow.send(chain.client, "openDispute", key)
    assert wait_for(api, job["job_id"], states={"disputed"}, timeout=30)["state"] == "disputed"
    pool_before = chain.w3.eth.get_balance(chain.pool)
    arbiter = Account.from_key(stack.info.dev_keys["control"])
    chain.escrow.send(arbiter, "resolveDispute", key, 2_500)      # a quarter to the worker
    final = wait_for(api, job["job_id"], timeout=30)
    assert final["state"] == "settled"
    resolved = [e for e in api.events(job["job_id"])["events"] if e["type"] == "settlement.resolved"]
    assert resolved[0]["data"]["to_worker"] == str(WEI // 4)
    assert resolved[0]["data"]["to_client"] == str(WEI - WEI // 4)
    assert chain.w3.eth.get_balance(chain.pool) - pool_before == WEI // 4
    assert "settlement.released" not in event_types(api, job["job_id"])
