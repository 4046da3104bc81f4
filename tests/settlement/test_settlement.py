"""Escrow jobs on the real stack and chain: funded only by their client on the quoted terms,
run once funded, paid the price fixed at assignment with the change returned, released only
after verification and only once, refunded when they fail — including across an RPC outage."""
import dataclasses
import json
import time
import uuid

import pytest
from conftest import event_types, wait_for
from eth_account import Account
from web3 import Web3

from chalicelib import catalog
from chalicelib.jobs import attempts
from chalicelib.jobs import lifecycle as jobs
from chalicelib.models import EscrowTerms, Manifest, State
from chalicelib.settlement import follower, payments
from chalicelib.settlement.chain import NATIVE, ContractReverted, Escrow, EscrowState
from chalicelib.settlement.escrow import FundingQuote, job_key_bytes, quote_of
from chalicelib.settlement.money import to_base_units

pytestmark = pytest.mark.stack
PRICE = "0.01"
WEI = 10**16


def probe_price(symbol="ETH", decimals=18) -> int:
    """What the catalog says a probe costs in `symbol`: one flat job of work."""
    quote = catalog.default().job_class("media_probe").quote
    return to_base_units(quote.seconds_per_job * quote.per_second[symbol], decimals)


@pytest.fixture(scope="module")
def chain(stack):
    keys = stack.info.dev_keys
    w3 = Web3(Web3.HTTPProvider(stack.info.rpc_url))
    return dataclasses.make_dataclass("Chain", ["w3", "escrow", "client", "pool"])(
        w3, Escrow(w3, stack.info.escrow_address), Account.from_key(keys["client"]),
        keys["pool_address"])


@pytest.fixture(scope="module")
def operator_api(stack):
    from conftest import OPERATOR

    from chalicelib.identity.signing import did_for
    from proofline.client import Api
    return Api(stack.info.api_url, reader=(OPERATOR, did_for(OPERATOR.address, 31337)))


@pytest.fixture(scope="module")
def api(client_api):
    """Escrow jobs are the client's: it submits them (signed), funds them and reads them."""
    return client_api


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


def fund(chain, job, funder=None):
    """Fund on the router's quote, as the client (or `funder`, who will be refused)."""
    terms = EscrowTerms.model_validate(job["escrow"])
    return chain.escrow.fund(funder or chain.client, quote_of(terms),
                             bytes.fromhex(terms.quote_signature[2:]))


def credit(chain, account, token=NATIVE) -> int:
    """What `account` can withdraw from the escrow: pay, change, refunds it refused."""
    return chain.escrow.credit(token, account)


def paid_gas(chain, receipt) -> int:
    tx = chain.w3.eth.get_transaction_receipt(receipt.tx_hash)
    return tx["gasUsed"] * tx["effectiveGasPrice"]


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


def test_an_escrow_job_waits_for_funding_runs_and_pays_the_price(api, chain, stored_clip):
    job = escrow_job(api, stored_clip)
    time.sleep(2)
    assert api.job(job["job_id"])["state"] == "requested"          # not routed unfunded
    pool_before = credit(chain, chain.pool)
    client_before = chain.w3.eth.get_balance(chain.client.address)
    change_before = credit(chain, chain.client.address)
    funding = fund(chain, job)
    final = wait_for(api, job["job_id"], timeout=90)
    assert final["state"] == "settled", api.events(job["job_id"])
    types = event_types(api, job["job_id"])
    # The chain's assign goes out with the settlement queue's next batch: before the release.
    assert types.index("escrow.funded") < types.index("job.assigned") < types.index("validation.passed") \
        < types.index("settlement.released")
    assert types.index("job.assigned") < types.index("escrow.assigned") < types.index("settlement.released")
    events = api.events(job["job_id"])["events"]
    released = [e for e in events if e["type"] == "settlement.released"][0]
    assert released["data"]["gas_used"] > 0 and released["data"]["outputs"] == [final["outputs"][0]["sha256"]]
    price = probe_price()
    assert final["escrow"]["price"] == price and final["escrow"]["charged"] == price
    assert released["data"]["charged"] == str(price) and released["data"]["refunded"] == str(WEI - price)
    assert final["payment"] == {"symbol": "ETH", "max_price": "0.01", "price": "4E-8", "held": "0",
                                "charged": "4E-8", "fee": "0", "refunded": "0.00999996"}
    # The worker is owed the price; the client paid the amount and its gas, and is owed the
    # change: the price and its own gas, nothing else.
    assert credit(chain, chain.pool) - pool_before == price
    assert client_before - chain.w3.eth.get_balance(chain.client.address) == WEI + paid_gas(chain, funding)
    assert credit(chain, chain.client.address) - change_before == WEI - price
    assert chain.escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:])).state == EscrowState.RELEASED


def test_a_third_party_cannot_fund_or_grief_a_clients_job(api, chain, stack, stored_clip):
    """The griefing that once failed a victim's job with 1 wei: the contract refuses anyone
    but the quoted client, and the client on any other terms."""
    job = escrow_job(api, stored_clip)
    stranger = stack.anvil.accounts[7]
    with pytest.raises(ContractReverted) as refused:
        fund(chain, job, funder=stranger)
    assert refused.value.error == "BadQuote"
    terms = EscrowTerms.model_validate(job["escrow"])
    for changed in ({"amount": 1}, {"duration": 3}):        # a client on its own terms
        forged = FundingQuote(**{**quote_of(terms).__dict__, **changed})
        with pytest.raises(ContractReverted) as refused:
            chain.escrow.fund(chain.client, forged, bytes.fromhex(terms.quote_signature[2:]))
        assert refused.value.error == "BadQuote"
    assert api.job(job["job_id"])["state"] == "requested"
    fund(chain, job)                                   # the client's own funding still works
    assert wait_for(api, job["job_id"], timeout=90)["state"] == "settled"


def test_the_job_key_cannot_be_derived_from_the_job_id(api, stored_clip, chain):
    job = escrow_job(api, stored_clip)
    from eth_utils import keccak
    assert job["escrow"]["job_key"] != "0x" + keccak(text=job["job_id"]).hex()
    again = escrow_job(api, stored_clip)             # same client, same input: another key
    assert again["escrow"]["job_key"] != job["escrow"]["job_key"]


def test_duplicate_release_requests_pay_once(api, chain, stored_clip, ports, aws, stack):
    job = escrow_job(api, stored_clip)
    fund(chain, job)
    wait_for(api, job["job_id"], timeout=90)
    before = credit(chain, chain.pool)
    url = aws.sqs.get_queue_url(QueueName=ports.settings.settlement_queue)["QueueUrl"]
    for _ in range(3):
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
            {"action": "release", "job_id": job["job_id"]}))
    assert payments.settle(ports, "release", job["job_id"]) == "already settled"
    time.sleep(3)
    assert credit(chain, chain.pool) == before
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


def test_a_price_above_the_ceiling_is_refused_at_the_door(api, stored_clip):
    from proofline.client import ApiError
    with pytest.raises(ApiError) as refused:
        escrow_job(api, stored_clip, max_price="0.00000001")   # under the probe's 0.00000004
    assert refused.value.status == 400 and refused.value.reason == "price_above_ceiling"


def stack_client_did(chain) -> str:
    from chalicelib.identity.signing import did_for
    return did_for(chain.client.address, chain.w3.eth.chain_id)


class RecordingQueues:
    def __init__(self):
        self.sent = []

    def send(self, queue, message):
        self.sent.append((queue, json.loads(json.dumps(message))))


def verified_but_unpaid(ports, chain, stored_clip):
    """An escrow job taken to `verified` by hand, its settlement message held back."""
    held = dataclasses.replace(ports, queues=RecordingQueues())
    manifest = Manifest(kind="media_probe", input_uri=stored_clip["input_uri"],
                        input_hash=stored_clip["input_hash"], client_did=stack_client_did(chain),
                        payment_policy="escrow_before_start", max_price=PRICE)
    job, _ = jobs.accept(held, manifest, job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    # The stack's chain follower finds jobs by their escrow alias; without it the follower
    # cannot take this job's funding before the test does (it runs every second).
    from chalicelib import aws
    aws.client("dynamodb").delete_item(
        TableName=ports.settings.jobs_table,
        Key={"pk": {"S": f"ALIAS#escrow:{job.escrow.job_key}"}, "sk": {"S": "JOB"}})
    receipt = chain.escrow.fund(chain.client, quote_of(job.escrow),
                                bytes.fromhex(job.escrow.quote_signature[2:]))
    log = chain.escrow.contract.events.Funded().get_logs(from_block=receipt.block,
                                                         to_block=receipt.block)[0]
    assigned = follower.on_funded(held, job, log)
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
    before = credit(chain, chain.pool)
    assert payments.settle(held, "release", job.job_id) == "released"
    assert payments.settle(held, "release", job.job_id) == "already settled"
    assert credit(chain, chain.pool) - before == probe_price()
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


def test_reconcile_finds_planted_drift_and_repairs_what_is_safe(ports, chain, stored_clip, api,
                                                                 operator_api):
    held, job = verified_but_unpaid(ports, chain, stored_clip)    # verified, never released
    rows = {r["job_id"]: r for r in payments.reconcile(held)}
    assert rows[job.job_id]["kind"] == "verified_not_released"
    assert rows[job.job_id]["repair"] == "release"
    # The stack's scheduled reconciliation re-sends the release; the handler pays it.
    assert wait_for(api, job.job_id, timeout=60)["state"] == "settled"
    assert chain.escrow.job(job_key_bytes(job)).state == EscrowState.RELEASED
    assert job.job_id not in {r["job_id"] for r in operator_api.settlement_drift()}



# -- ERC-20 payment and dispute windows -------------------------------------------------------
def token_balance(chain, token, account):
    from chalicelib.settlement.chain import artifact
    erc20 = chain.w3.eth.contract(address=token, abi=artifact("TestToken")["abi"])
    return erc20.functions.balanceOf(account).call()


def test_an_erc20_priced_job_is_charged_the_price_in_the_token(api, chain, stack, stored_clip):
    from proofline.devstack import TEST_TOKEN, TEST_TOKEN_DECIMALS
    job, _ = api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                         "payment_policy": "escrow_before_start", "max_price": "2.5",
                         "payment_token": TEST_TOKEN}, idempotency_key=str(uuid.uuid4()))
    token = stack.info.token_address
    assert job["escrow"]["token"].lower() == token.lower()
    assert job["escrow"]["amount"] == 2_500_000 and job["escrow"]["decimals"] == 6  # exact units
    pool, client = (token_balance(chain, token, a) for a in (chain.pool, chain.client.address))
    owed = credit(chain, chain.pool, token), credit(chain, chain.client.address, token)
    client_eth = chain.w3.eth.get_balance(chain.client.address)
    funding = fund(chain, job)
    final = wait_for(api, job["job_id"], timeout=90)
    assert final["state"] == "settled"
    price = probe_price(TEST_TOKEN, TEST_TOKEN_DECIMALS)
    assert final["escrow"]["price"] == price == 100             # 0.0001 PUSD
    assert credit(chain, chain.pool, token) - owed[0] == price
    assert credit(chain, chain.client.address, token) - owed[1] == 2_500_000 - price
    # Both collect: the pool gains the price, the client has paid exactly the price.
    chain.escrow.send(Account.from_key(stack.info.dev_keys["pool"]), "withdraw", token)
    withdrawal = chain.escrow.send(chain.client, "withdraw", token)
    assert token_balance(chain, token, chain.pool) - pool == price + owed[0]
    assert client - token_balance(chain, token, chain.client.address) == price - owed[1]
    # The client's ETH moved by gas only (the approval, the funding, the withdrawal).
    spent = client_eth - chain.w3.eth.get_balance(chain.client.address)
    assert spent >= paid_gas(chain, funding) + paid_gas(chain, withdrawal)
    assert spent < 4 * (paid_gas(chain, funding) + paid_gas(chain, withdrawal))


def test_a_price_in_a_token_the_stage_does_not_accept_is_refused(api, stored_clip):
    from proofline.client import ApiError
    with pytest.raises(ApiError) as refused:
        api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                    "payment_policy": "escrow_before_start", "max_price": "1",
                    "payment_token": "DOGE"}, idempotency_key=str(uuid.uuid4()))
    assert refused.value.status == 400 and refused.value.reason == "unknown_payment_token"


def test_a_failed_token_job_refunds_everything(api, chain, stack, tmp_path):
    from proofline.devstack import TEST_TOKEN
    garbage = tmp_path / "not-media-either.mp4"
    garbage.write_bytes(b"\x01garbage" * 512)
    stored = api.upload(garbage)
    job, _ = api.submit({"kind": "media_probe", "input_uri": stored["input_uri"],
                         "payment_policy": "escrow_before_start", "max_price": "1",
                         "payment_token": TEST_TOKEN}, idempotency_key=str(uuid.uuid4()))
    token = stack.info.token_address
    before = token_balance(chain, token, chain.client.address)
    fund(chain, job)
    final = wait_for(api, job["job_id"], timeout=90)
    assert final["state"] == "failed" and final["reason"] == "media_unreadable"
    assert escrow_state(chain, job, until=EscrowState.REFUNDED) == EscrowState.REFUNDED
    assert recorded(api, job, "settlement.refunded")
    assert token_balance(chain, token, chain.client.address) == before
    assert api.job(job["job_id"])["payment"]["refunded"] == "1"


@pytest.fixture
def dispute_window(stack, chain):
    """Jobs funded inside this fixture carry the given dispute window (the contract copies
    its window into each job when it is funded)."""
    admin = stack.anvil.accounts[0]

    def set_window(seconds):
        chain.escrow.send(admin, "setDisputeWindows", seconds, 3600)
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
    before = credit(chain, chain.pool)
    job = funded_with_window(api, chain, stored_clip, dispute_window, 3)
    assert api.job(job["job_id"])["state"] == "verified"      # paid only after the window
    assert escrow_state(chain, job, until=EscrowState.VERIFIED) == EscrowState.VERIFIED
    assert credit(chain, chain.pool) == before
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled"
    types = event_types(api, job["job_id"])
    assert types.index("settlement.scheduled") < types.index("settlement.released")
    assert credit(chain, chain.pool) - before == probe_price()
    assert chain.escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:])).state == EscrowState.RELEASED


def test_a_disputed_job_waits_for_the_arbiter_and_settles_on_the_split(api, chain, stack,
                                                                       stored_clip, dispute_window):
    job = funded_with_window(api, chain, stored_clip, dispute_window, 600)
    key = bytes.fromhex(job["escrow"]["job_key"][2:])
    assert escrow_state(chain, job, until=EscrowState.VERIFIED) == EscrowState.VERIFIED
    chain.escrow.send(chain.client, "openDispute", key)
    assert wait_for(api, job["job_id"], states={"disputed"}, timeout=30)["state"] == "disputed"
    pool_before = credit(chain, chain.pool)
    arbiter = Account.from_key(stack.info.dev_keys["arbiter"])
    chain.escrow.send(arbiter, "resolveDispute", key, 2_500)      # a quarter of the price
    final = wait_for(api, job["job_id"], timeout=30)
    assert final["state"] == "settled"
    resolved = [e for e in api.events(job["job_id"])["events"] if e["type"] == "settlement.resolved"]
    quarter = probe_price() // 4
    assert resolved[0]["data"]["to_worker"] == str(quarter)
    assert resolved[0]["data"]["to_client"] == str(WEI - quarter)
    assert credit(chain, chain.pool) - pool_before == quarter
    assert "settlement.released" not in event_types(api, job["job_id"])


def test_a_burst_of_twenty_jobs_is_assigned_in_batches_and_each_worker_paid_once(api, chain,
                                                                                  stored_clip):
    jobs_ = [escrow_job(api, stored_clip) for _ in range(20)]
    before = credit(chain, chain.pool)
    for job in jobs_:
        fund(chain, job)
    finals = [wait_for(api, job["job_id"], timeout=180) for job in jobs_]
    assert [f["state"] for f in finals] == ["settled"] * 20
    events = {job["job_id"]: api.events(job["job_id"])["events"] for job in jobs_}
    released = [e for evs in events.values() for e in evs if e["type"] == "settlement.released"]
    assert len(released) == 20                                  # once each
    assert credit(chain, chain.pool) - before == 20 * probe_price()
    # Fundings seen together are assigned together: fewer assign transactions than jobs.
    assigns = {e["data"]["tx_hash"] for evs in events.values() for e in evs
               if e["type"] == "escrow.assigned"}
    assert len(assigns) < 20
    for job in jobs_:
        record = chain.escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:]))
        assert record.state == EscrowState.RELEASED and record.assignments == 1


def test_after_the_deadline_a_reclaim_stops_the_job_and_withholds_its_outputs(
        ports, chain, stored_clip, stack):
    """The client who wants the work for free: it waits out a job the control plane never
    paid (its release held back here), reclaims, and finds the outputs withheld."""
    from chalicelib.jobs.documents import handed_out, job_document
    held, job = verified_but_unpaid(ports, chain, stored_clip)
    key = job_key_bytes(job)
    with pytest.raises(ContractReverted) as early:
        chain.escrow.send(chain.client, "reclaim", key)           # mid-job: refused
    assert early.value.error == "DeadlineNotPassed"
    chain.w3.provider.make_request("evm_increaseTime", [job.escrow.duration_s + 1])
    chain.w3.provider.make_request("evm_mine", [])
    receipt = chain.escrow.send(chain.client, "reclaim", key)
    log = chain.escrow.contract.events.Reclaimed().get_logs(from_block=receipt.block,
                                                            to_block=receipt.block)[0]
    stopped = follower.on_reclaimed(held, held.store.get(job.job_id), log)
    assert stopped.state == State.FAILED and stopped.reason == "reclaimed"
    view = held.store.view(job.job_id)
    assert not handed_out(view)
    assert all(o["download_url"] is None for o in job_document(held, view)["outputs"])
    # Its release, if it came now, finds nothing to pay.
    assert payments.settle(held, "release", job.job_id).startswith("not releasable")


def test_the_control_plane_reassigns_a_moved_payee_once_and_never_twice(ports, chain, stored_clip):
    from chalicelib.identity.signing import did_for
    held, job = verified_but_unpaid(ports, chain, stored_clip)
    key = job_key_bytes(job)
    assert payments.settle(held, "assign", job.job_id) == "assigned"
    assert chain.escrow.job(key).worker == chain.pool
    first, second = (did_for(Account.create().address, 31337) for _ in range(2))

    def pay(worker):
        stored = held.store.get(job.job_id)
        held.store.commit(stored, stored.model_copy(update={"version": stored.version + 1,
                                                           "worker": worker}))
        return payments.settle(held, "assign", job.job_id)

    assert pay(first) == "reassigned"
    record = chain.escrow.job(key)
    assert record.assignments == 2 and record.worker == Web3.to_checksum_address(first.split(":")[-1])
    assert pay(second) == "re-assigned once already; the payee stays"
    assert chain.escrow.job(key).worker == record.worker
    types = [e.type for e in held.store.view(job.job_id).events]
    assert types.count("escrow.assigned") == 1 and types.count("escrow.reassigned") == 1


def test_a_release_sent_elsewhere_is_found_on_chain_with_its_transaction(ports, chain,
                                                                          stored_clip, stack):
    """Another process (a crashed handler's retry, say) released the job: the handler finds
    the release on chain, records its transaction, and pays nothing again."""
    from chalicelib.settlement.escrow import result_hash
    held, job = verified_but_unpaid(ports, chain, stored_clip)
    assert payments.settle(held, "assign", job.job_id) == "assigned"
    view = held.store.view(job.job_id)
    attempt = next(a for a in view.attempts if a.number == job.attempt)
    verifier = Account.from_key(stack.info.dev_keys["verifier"])
    elsewhere = chain.escrow.send(verifier, "release", job_key_bytes(job),
                                  result_hash([o.sha256 for o in job.outputs]),
                                  bytes.fromhex(attempt.signature[2:]))
    owed = credit(chain, chain.pool)
    assert payments.settle(held, "release", job.job_id) == "released"
    released = [e for e in held.store.view(job.job_id).events if e.type == "settlement.released"]
    assert [e.data["tx_hash"] for e in released] == [elsewhere.tx_hash]
    assert released[0].data["note"] == "found released on chain"
    assert credit(chain, chain.pool) == owed
