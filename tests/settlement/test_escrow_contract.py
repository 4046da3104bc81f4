"""The escrow contract on anvil, grouped by state: every function, every revert path, the
events, the ERC-20 path, and a receiver that tries to re-enter."""
import pytest
from web3 import Web3

from chalicelib.settlement import chain
from chalicelib.settlement.chain import NATIVE, ContractReverted, Escrow, EscrowState
from chalicelib.settlement.escrow import job_key, sign_result
from proofline.anvil import Anvil
from proofline.devstack import free_port

ETH = 10**18
AMOUNT = ETH // 100
ROLES = ("ROUTER_ROLE", "VERIFIER_ROLE", "OPERATOR_ROLE", "ARBITER_ROLE")


@pytest.fixture(scope="module")
def node():
    anvil = Anvil(free_port()).start()
    yield anvil
    anvil.stop()


class Actors:
    def __init__(self, node):
        (self.admin, self.router, self.verifier, self.operator, self.arbiter, self.client,
         self.worker, self.stranger, self.other_client, self.treasury) = node.accounts
        self.w3 = node.web3()


@pytest.fixture()
def actors(node):
    return Actors(node)


@pytest.fixture()
def escrow(actors):
    address = chain.deploy(actors.w3, actors.admin, "ProoflineEscrow", actors.admin.address,
                           actors.treasury.address)
    escrow = Escrow(actors.w3, address)
    for role, who in zip(ROLES, (actors.router, actors.verifier, actors.operator, actors.arbiter)):
        escrow.send(actors.admin, "grantRole", getattr(escrow.contract.functions, role)().call(),
                    who.address)
    return escrow


_counter = iter(range(10**6))


def new_id() -> bytes:
    return job_key(f"job-contract-test-{next(_counter)}")


def now(w3: Web3) -> int:
    return w3.eth.get_block("latest")["timestamp"]


def travel(w3: Web3, seconds: int) -> None:
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


def funded(escrow, actors, amount=AMOUNT, ttl=3600) -> bytes:
    job = new_id()
    escrow.fund(actors.client, job, amount, now(actors.w3) + ttl)
    return job


def assigned(escrow, actors, **kw) -> bytes:
    job = funded(escrow, actors, **kw)
    escrow.send(actors.router, "assign", job, actors.worker.address)
    return job


def reverts(name, fn, *args, **kw):
    with pytest.raises(ContractReverted) as info:
        fn(*args, **kw)
    assert info.value.error == name, info.value
    return info.value


RESULT = chain.result_hash(["sha256:" + "ab" * 32])


# -- funding -----------------------------------------------------------------------------------
def test_fund_holds_the_ether_and_records_the_job(escrow, actors):
    job = new_id()
    deadline = now(actors.w3) + 600
    receipt = escrow.fund(actors.client, job, AMOUNT, deadline)
    [event] = [e for e in receipt.events if e["event"] == "Funded"]
    assert event["jobId"] == job and event["amount"] == AMOUNT and event["deadline"] == deadline
    record = escrow.job(job)
    assert (record.state, record.client, record.amount) == (EscrowState.FUNDED, actors.client.address, AMOUNT)
    assert actors.w3.eth.get_balance(escrow.address) == AMOUNT


def test_funding_twice_reverts(escrow, actors):
    job = funded(escrow, actors)
    reverts("AlreadyFunded", escrow.fund, actors.other_client, job, AMOUNT, now(actors.w3) + 600)


@pytest.mark.parametrize("amount, value", [(0, 0), (AMOUNT, AMOUNT - 1), (AMOUNT, 0)])
def test_funding_with_a_wrong_amount_reverts(escrow, actors, amount, value):
    reverts("BadAmount", escrow.send, actors.client, "fund", new_id(), NATIVE, amount,
            now(actors.w3) + 600, value=value)


def test_funding_with_a_past_deadline_or_an_unknown_token_reverts(escrow, actors):
    reverts("BadDeadline", escrow.fund, actors.client, new_id(), AMOUNT, now(actors.w3) - 1)
    reverts("TokenNotAllowed", escrow.fund, actors.client, new_id(), AMOUNT,
            now(actors.w3) + 600, token=actors.stranger.address)


# -- assignment --------------------------------------------------------------------------------
def test_only_the_router_assigns(escrow, actors):
    job = funded(escrow, actors)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.stranger, "assign", job,
            actors.worker.address)
    receipt = escrow.send(actors.router, "assign", job, actors.worker.address)
    assert receipt.events[0]["event"] == "Assigned" and escrow.job(job).worker == actors.worker.address
    reverts("WrongState", escrow.send, actors.router, "assign", new_id(), actors.worker.address)


# -- release -----------------------------------------------------------------------------------
def test_release_pays_the_worker_for_its_signed_result(escrow, actors):
    job = assigned(escrow, actors)
    before = actors.w3.eth.get_balance(actors.worker.address)
    signature = sign_result(actors.worker, escrow, job, RESULT)
    receipt = escrow.send(actors.verifier, "release", job, RESULT, signature)
    [event] = [e for e in receipt.events if e["event"] == "Released"]
    assert event["resultHash"] == RESULT and event["paid"] == AMOUNT and event["fee"] == 0
    assert actors.w3.eth.get_balance(actors.worker.address) - before == AMOUNT
    assert escrow.job(job).state == EscrowState.RELEASED


def test_release_twice_pays_once(escrow, actors):
    job = assigned(escrow, actors)
    signature = sign_result(actors.worker, escrow, job, RESULT)
    escrow.send(actors.verifier, "release", job, RESULT, signature)
    reverts("WrongState", escrow.send, actors.verifier, "release", job, RESULT, signature)


def test_release_needs_the_assigned_workers_signature_over_this_result(escrow, actors):
    job = assigned(escrow, actors)
    reverts("ECDSAInvalidSignatureLength", escrow.send, actors.verifier, "release", job, RESULT, b"")
    forged = sign_result(actors.stranger, escrow, job, RESULT)
    error = reverts("BadSignature", escrow.send, actors.verifier, "release", job, RESULT, forged)
    assert error.args_ == (actors.stranger.address, actors.worker.address)
    other_result = sign_result(actors.worker, escrow, job, chain.result_hash(["sha256:" + "cd" * 32]))
    reverts("BadSignature", escrow.send, actors.verifier, "release", job, RESULT, other_result)
    assert escrow.job(job).state == EscrowState.ASSIGNED


def test_only_the_verifier_releases_and_not_before_assignment(escrow, actors):
    job = funded(escrow, actors)
    signature = sign_result(actors.worker, escrow, job, RESULT)
    reverts("WrongState", escrow.send, actors.verifier, "release", job, RESULT, signature)
    escrow.send(actors.router, "assign", job, actors.worker.address)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.worker, "release", job,
            RESULT, signature)


def test_release_batch(escrow, actors):
    jobs = [assigned(escrow, actors) for _ in range(3)]
    signatures = [sign_result(actors.worker, escrow, j, RESULT) for j in jobs]
    before = actors.w3.eth.get_balance(actors.worker.address)
    receipt = escrow.send(actors.verifier, "releaseBatch", jobs, [RESULT] * 3, signatures)
    assert [e["event"] for e in receipt.events].count("Released") == 3
    assert actors.w3.eth.get_balance(actors.worker.address) - before == 3 * AMOUNT
    reverts("LengthMismatch", escrow.send, actors.verifier, "releaseBatch", jobs, [RESULT], signatures)


def test_a_protocol_fee_goes_to_the_treasury(escrow, actors):
    escrow.send(actors.admin, "setFee", 250, actors.treasury.address)
    job = assigned(escrow, actors)
    receipt = escrow.send(actors.verifier, "release", job, RESULT,
                          sign_result(actors.worker, escrow, job, RESULT))
    released = [e for e in receipt.events if e["event"] == "Released"][0]
    assert released["fee"] == AMOUNT * 250 // 10_000 and released["paid"] == AMOUNT - released["fee"]
    before = actors.w3.eth.get_balance(actors.treasury.address)
    escrow.send(actors.stranger, "withdrawFees", NATIVE)
    assert actors.w3.eth.get_balance(actors.treasury.address) - before == released["fee"]
    reverts("BadFee", escrow.send, actors.admin, "setFee", 1001, actors.treasury.address)


# -- refund and reclaim ------------------------------------------------------------------------
def test_refund_returns_the_funds_and_blocks_a_later_release(escrow, actors):
    job = assigned(escrow, actors)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.stranger, "refund", job)
    before = actors.w3.eth.get_balance(actors.client.address)
    receipt = escrow.send(actors.operator, "refund", job)
    assert receipt.events[0]["event"] == "Refunded"
    assert actors.w3.eth.get_balance(actors.client.address) - before == AMOUNT
    reverts("WrongState", escrow.send, actors.verifier, "release", job, RESULT,
            sign_result(actors.worker, escrow, job, RESULT))
    reverts("WrongState", escrow.send, actors.operator, "refund", job)


def test_reclaim_only_after_the_deadline_and_only_by_the_client(escrow, actors):
    job = assigned(escrow, actors, ttl=100)
    reverts("DeadlineNotPassed", escrow.send, actors.client, "reclaim", job)
    travel(actors.w3, 101)
    reverts("NotClient", escrow.send, actors.stranger, "reclaim", job)
    receipt = escrow.send(actors.client, "reclaim", job)
    assert receipt.events[0]["event"] == "Reclaimed" and escrow.job(job).state == EscrowState.RECLAIMED
    reverts("WrongState", escrow.send, actors.client, "reclaim", job)


def test_no_reclaim_after_release(escrow, actors):
    job = assigned(escrow, actors, ttl=100)
    escrow.send(actors.verifier, "release", job, RESULT, sign_result(actors.worker, escrow, job, RESULT))
    travel(actors.w3, 101)
    reverts("WrongState", escrow.send, actors.client, "reclaim", job)


# -- disputes ----------------------------------------------------------------------------------
def test_with_a_dispute_window_release_waits_and_the_client_can_dispute(escrow, actors):
    escrow.send(actors.admin, "setDisputeWindow", 600)
    job = assigned(escrow, actors)
    receipt = escrow.send(actors.verifier, "release", job, RESULT,
                          sign_result(actors.worker, escrow, job, RESULT))
    assert receipt.events[0]["event"] == "Verified" and escrow.job(job).state == EscrowState.VERIFIED
    reverts("DisputeWindowOpen", escrow.send, actors.stranger, "finalize", job)
    reverts("NotClient", escrow.send, actors.stranger, "openDispute", job)
    escrow.send(actors.client, "openDispute", job)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.client, "resolveDispute", job, 7000)
    reverts("BadShare", escrow.send, actors.arbiter, "resolveDispute", job, 10_001)
    worker, client = (actors.w3.eth.get_balance(a.address) for a in (actors.worker, actors.client))
    receipt = escrow.send(actors.arbiter, "resolveDispute", job, 7000)
    assert receipt.events[0]["event"] == "DisputeResolved"
    assert actors.w3.eth.get_balance(actors.worker.address) - worker == AMOUNT * 7 // 10
    assert actors.w3.eth.get_balance(actors.client.address) - client == AMOUNT * 3 // 10


def test_after_the_window_anyone_finalizes_and_disputes_are_closed(escrow, actors):
    escrow.send(actors.admin, "setDisputeWindow", 600)
    job = assigned(escrow, actors)
    escrow.send(actors.verifier, "release", job, RESULT, sign_result(actors.worker, escrow, job, RESULT))
    travel(actors.w3, 601)
    reverts("DisputeWindowClosed", escrow.send, actors.client, "openDispute", job)
    before = actors.w3.eth.get_balance(actors.worker.address)
    escrow.send(actors.stranger, "finalize", job)
    assert actors.w3.eth.get_balance(actors.worker.address) - before == AMOUNT


# -- ERC-20 ------------------------------------------------------------------------------------
def test_token_jobs_move_tokens(escrow, actors):
    token_address = chain.deploy(actors.w3, actors.admin, "TestToken")
    token = actors.w3.eth.contract(address=token_address, abi=chain.artifact("TestToken")["abi"])
    tokens = Escrow(actors.w3, escrow.address)

    def call(account, fn, *args):
        tx = getattr(token.functions, fn)(*args).build_transaction({
            "from": account.address, "nonce": actors.w3.eth.get_transaction_count(account.address)})
        h = actors.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        assert actors.w3.eth.wait_for_transaction_receipt(h)["status"] == 1

    call(actors.admin, "mint", actors.client.address, 5_000_000)
    call(actors.client, "approve", escrow.address, 5_000_000)
    job = new_id()
    reverts("TokenNotAllowed", tokens.fund, actors.client, job, 2_000_000, now(actors.w3) + 600,
            token=token_address)
    escrow.send(actors.admin, "setTokenAllowed", token_address, True)
    tokens.fund(actors.client, job, 2_000_000, now(actors.w3) + 600, token=token_address)
    escrow.send(actors.router, "assign", job, actors.worker.address)
    escrow.send(actors.verifier, "release", job, RESULT, sign_result(actors.worker, escrow, job, RESULT))
    assert token.functions.balanceOf(actors.worker.address).call() == 2_000_000
    assert token.functions.balanceOf(escrow.address).call() == 0


# -- reentrancy --------------------------------------------------------------------------------
def test_a_receiver_that_re_enters_is_paid_at_most_once(escrow, actors):
    malicious = chain.deploy(actors.w3, actors.admin, "MaliciousReceiver", escrow.address)
    attacker = actors.w3.eth.contract(address=malicious, abi=chain.artifact("MaliciousReceiver")["abi"])
    job = new_id()

    def call(fn, *args, value=0):
        tx = getattr(attacker.functions, fn)(*args).build_transaction({
            "from": actors.stranger.address, "value": value,
            "nonce": actors.w3.eth.get_transaction_count(actors.stranger.address)})
        h = actors.w3.eth.send_raw_transaction(actors.stranger.sign_transaction(tx).raw_transaction)
        return actors.w3.eth.wait_for_transaction_receipt(h)

    call("aim", job)
    call("fundTarget", now(actors.w3) + 600, value=AMOUNT)
    assert escrow.job(job).client == malicious
    receipt = escrow.send(actors.operator, "refund", job)       # pays the attacker, who re-enters
    assert [e["event"] for e in receipt.events] == ["Refunded", "PaymentDeferred"]
    assert escrow.job(job).state == EscrowState.REFUNDED
    assert escrow.contract.functions.credits(NATIVE, malicious).call() == AMOUNT
    assert actors.w3.eth.get_balance(malicious) == 0 and attacker.functions.reentered().call() is False
    assert actors.w3.eth.get_balance(escrow.address) >= AMOUNT   # still held, credited once


def test_the_committed_artifacts_match_a_fresh_compile():
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(["node", "contracts/build.js", "--check"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
