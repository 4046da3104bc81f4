"""The escrow contract on anvil, grouped by state: every function, every revert path, the
events, the ERC-20 path, and the people who try to break it — a third party funding someone
else's job, a client escaping mid-job or on its own terms, a second re-assignment, an arbiter
who never answers, and a receiver that re-enters."""
import secrets

import pytest
from web3 import Web3

from chalicelib.settlement import chain
from chalicelib.settlement.chain import NATIVE, ContractReverted, Escrow, EscrowState
from chalicelib.settlement.escrow import FundingQuote, job_key, sign_funding, sign_result
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
PRICE = AMOUNT * 6 // 10


def new_id(escrow, client) -> bytes:
    return job_key(chain_id=escrow.w3.eth.chain_id, contract=escrow.address, client=client.address,
                   job_id=f"job-contract-test-{next(_counter)}", salt=secrets.token_bytes(32))


def now(w3: Web3) -> int:
    return w3.eth.get_block("latest")["timestamp"]


def travel(w3: Web3, seconds: int) -> None:
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


def quote(escrow, actors, *, client=None, job=None, amount=AMOUNT, duration=3600, expiry=None,
          token=NATIVE, signer=None):
    client = client or actors.client
    q = FundingQuote(job_key=job or new_id(escrow, client), client=client.address, token=token,
                     amount=amount, duration=duration,
                     expiry=expiry if expiry is not None else now(actors.w3) + 600)
    return q, sign_funding(signer or actors.router, escrow.result_domain(), q)


def funded(escrow, actors, amount=AMOUNT, ttl=3600) -> bytes:
    q, signature = quote(escrow, actors, amount=amount, duration=ttl)
    escrow.fund(actors.client, q, signature)
    return q.job_key


def assigned(escrow, actors, price=PRICE, **kw) -> bytes:
    job = funded(escrow, actors, **kw)
    escrow.send(actors.router, "assign", job, actors.worker.address, price)
    return job


def reverts(name, fn, *args, **kw):
    with pytest.raises(ContractReverted) as info:
        fn(*args, **kw)
    assert info.value.error == name, info.value
    return info.value


RESULT = chain.result_hash(["sha256:" + "ab" * 32])


def release(escrow, actors, job, worker=None):
    worker = worker or actors.worker
    return escrow.send(actors.verifier, "release", job, RESULT, sign_result(worker, escrow, job, RESULT))


def balance(actors, account) -> int:
    return actors.w3.eth.get_balance(account.address)


def credit(escrow, account, token=NATIVE) -> int:
    return escrow.credit(token, account.address)


def collect(escrow, actors, account, token=NATIVE) -> int:
    """Withdraw `account`'s credits in `token`; what its ETH balance gained, gas added back."""
    before = balance(actors, account)
    receipt = escrow.send(account, "withdraw", token)
    tx = actors.w3.eth.get_transaction_receipt(receipt.tx_hash)
    return balance(actors, account) - before + tx["gasUsed"] * tx["effectiveGasPrice"]


# -- funding -----------------------------------------------------------------------------------
def test_fund_holds_the_ether_on_the_quoted_terms(escrow, actors):
    q, signature = quote(escrow, actors, duration=900)
    receipt = escrow.fund(actors.client, q, signature)
    [event] = [e for e in receipt.events if e["event"] == "Funded"]
    block_time = actors.w3.eth.get_block(receipt.block)["timestamp"]
    assert event["jobId"] == q.job_key and event["amount"] == AMOUNT
    assert event["deadline"] == block_time + 900          # the quote's duration, from funding
    record = escrow.job(q.job_key)
    assert (record.state, record.client, record.amount) == (EscrowState.FUNDED, actors.client.address, AMOUNT)
    assert actors.w3.eth.get_balance(escrow.address) == AMOUNT


def test_a_third_party_cannot_fund_a_clients_job(escrow, actors):
    """The griefing that failed a victim's job with 1 wei: the quote names the client."""
    q, signature = quote(escrow, actors)
    reverts("BadQuote", escrow.fund, actors.stranger, q, signature)
    small = FundingQuote(**{**q.__dict__, "amount": 1})
    reverts("BadQuote", escrow.fund, actors.stranger, small, signature)
    assert escrow.job(q.job_key).state == EscrowState.NONE
    escrow.fund(actors.client, q, signature)               # the victim's own funding still works
    assert escrow.job(q.job_key).client == actors.client.address


def test_a_client_cannot_fund_on_other_terms(escrow, actors):
    """Less money, a longer or shorter deadline, another token: each breaks the router's signature."""
    q, signature = quote(escrow, actors)
    for changed in ({"amount": AMOUNT - 1}, {"duration": 3}, {"duration": 10**7},
                    {"token": actors.stranger.address}):
        forged = FundingQuote(**{**q.__dict__, **changed})
        with pytest.raises(ContractReverted) as info:
            escrow.send(actors.client, "fund", forged.job_key, forged.token, forged.amount,
                        forged.duration, forged.expiry, signature,
                        value=forged.amount if forged.token == NATIVE else 0)
        assert info.value.error == "BadQuote"
    own, own_signature = quote(escrow, actors, signer=actors.client)   # signing its own quote
    reverts("BadQuote", escrow.fund, actors.client, own, own_signature)


def test_an_expired_quote_cannot_be_funded(escrow, actors):
    q, signature = quote(escrow, actors, expiry=now(actors.w3) + 5)
    travel(actors.w3, 10)
    reverts("QuoteExpired", escrow.fund, actors.client, q, signature)


def test_funding_twice_reverts(escrow, actors):
    q, signature = quote(escrow, actors)
    escrow.fund(actors.client, q, signature)
    reverts("AlreadyFunded", escrow.fund, actors.client, q, signature)


@pytest.mark.parametrize("amount, value", [(AMOUNT, AMOUNT - 1), (AMOUNT, 0)])
def test_funding_with_a_wrong_value_reverts(escrow, actors, amount, value):
    q, signature = quote(escrow, actors, amount=amount)
    reverts("BadAmount", escrow.send, actors.client, "fund", q.job_key, NATIVE, amount,
            q.duration, q.expiry, signature, value=value)


def test_a_router_cannot_quote_nonsense(escrow, actors):
    q, signature = quote(escrow, actors, amount=0)
    reverts("BadAmount", escrow.send, actors.client, "fund", q.job_key, NATIVE, 0, q.duration,
            q.expiry, signature)
    q, signature = quote(escrow, actors, duration=0)
    reverts("BadDuration", escrow.fund, actors.client, q, signature)
    q, signature = quote(escrow, actors, token=actors.stranger.address)
    reverts("TokenNotAllowed", escrow.fund, actors.client, q, signature)


# -- assignment --------------------------------------------------------------------------------
def test_only_the_router_assigns_at_a_price_within_the_amount(escrow, actors):
    job = funded(escrow, actors)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.stranger, "assign", job,
            actors.worker.address, PRICE)
    reverts("PriceAboveAmount", escrow.send, actors.router, "assign", job, actors.worker.address,
            AMOUNT + 1)
    receipt = escrow.send(actors.router, "assign", job, actors.worker.address, PRICE)
    [event] = receipt.events
    assert (event["event"], event["price"], event["assignment"]) == ("Assigned", PRICE, 1)
    record = escrow.job(job)
    assert (record.worker, record.price) == (actors.worker.address, PRICE)
    reverts("WrongState", escrow.send, actors.router, "assign", new_id(escrow, actors.client),
            actors.worker.address, PRICE)


def test_one_re_assignment_and_no_second(escrow, actors):
    job = assigned(escrow, actors)
    receipt = escrow.send(actors.router, "assign", job, actors.stranger.address, PRICE // 2)
    assert receipt.events[0]["assignment"] == 2
    reverts("ReassignedAlready", escrow.send, actors.router, "assign", job, actors.worker.address, PRICE)
    # The first worker's signature no longer pays; the second's does, at the new price.
    reverts("BadSignature", release, escrow, actors, job)
    release(escrow, actors, job, worker=actors.stranger)
    assert credit(escrow, actors.stranger) == PRICE // 2 and credit(escrow, actors.worker) == 0


def test_no_re_assignment_after_a_release(escrow, actors):
    job = assigned(escrow, actors)
    release(escrow, actors, job)
    reverts("WrongState", escrow.send, actors.router, "assign", job, actors.stranger.address, PRICE)


def test_assign_batch(escrow, actors):
    jobs = [funded(escrow, actors) for _ in range(3)]
    receipt = escrow.send(actors.router, "assignBatch", jobs, [actors.worker.address] * 3, [1, 2, 3])
    assert [e["price"] for e in receipt.events] == [1, 2, 3]
    reverts("LengthMismatch", escrow.send, actors.router, "assignBatch", jobs, [actors.worker.address], [1])


# -- release -----------------------------------------------------------------------------------
def test_release_credits_the_price_and_the_change_at_once(escrow, actors):
    job = assigned(escrow, actors)
    receipt = release(escrow, actors, job)
    [event] = [e for e in receipt.events if e["event"] == "Released"]
    assert event["resultHash"] == RESULT and (event["paid"], event["fee"], event["change"]) == (
        PRICE, 0, AMOUNT - PRICE)
    assert escrow.job(job).state == EscrowState.RELEASED
    assert (credit(escrow, actors.worker), credit(escrow, actors.client)) == (PRICE, AMOUNT - PRICE)
    assert collect(escrow, actors, actors.worker) == PRICE
    assert collect(escrow, actors, actors.client) == AMOUNT - PRICE
    assert actors.w3.eth.get_balance(escrow.address) == 0
    reverts("NothingToWithdraw", escrow.send, actors.worker, "withdraw", NATIVE)


def test_release_twice_pays_once(escrow, actors):
    job = assigned(escrow, actors)
    release(escrow, actors, job)
    reverts("WrongState", release, escrow, actors, job)


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
    escrow.send(actors.router, "assign", job, actors.worker.address, PRICE)
    for not_verifier in (actors.worker, actors.router, actors.operator):
        reverts("AccessControlUnauthorizedAccount", escrow.send, not_verifier, "release", job,
                RESULT, signature)


def test_release_batch(escrow, actors):
    jobs = [assigned(escrow, actors) for _ in range(3)]
    signatures = [sign_result(actors.worker, escrow, j, RESULT) for j in jobs]
    before = credit(escrow, actors.worker)
    receipt = escrow.send(actors.verifier, "releaseBatch", jobs, [RESULT] * 3, signatures)
    assert [e["event"] for e in receipt.events].count("Released") == 3
    assert credit(escrow, actors.worker) - before == 3 * PRICE
    reverts("LengthMismatch", escrow.send, actors.verifier, "releaseBatch", jobs, [RESULT], signatures)


def test_a_protocol_fee_comes_out_of_the_price(escrow, actors):
    escrow.send(actors.admin, "setFee", 250, actors.treasury.address)
    job = assigned(escrow, actors)
    released = [e for e in release(escrow, actors, job).events if e["event"] == "Released"][0]
    assert released["fee"] == PRICE * 250 // 10_000 and released["paid"] == PRICE - released["fee"]
    assert released["change"] == AMOUNT - PRICE
    before = balance(actors, actors.treasury)
    escrow.send(actors.stranger, "withdrawFees", NATIVE)
    assert balance(actors, actors.treasury) - before == released["fee"]
    reverts("BadFee", escrow.send, actors.admin, "setFee", 1001, actors.treasury.address)


# -- refund and reclaim ------------------------------------------------------------------------
def test_refund_returns_the_funds_and_blocks_a_later_release(escrow, actors):
    job = assigned(escrow, actors)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.stranger, "refund", job)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.router, "refund", job)
    before = balance(actors, actors.client)
    receipt = escrow.send(actors.operator, "refund", job)
    assert receipt.events[0]["event"] == "Refunded"
    assert balance(actors, actors.client) - before == AMOUNT
    reverts("WrongState", release, escrow, actors, job)
    reverts("WrongState", escrow.send, actors.operator, "refund", job)


def test_no_reclaim_while_assigned_before_the_deadline(escrow, actors):
    """The escape that kept the work and the money: reclaim mid-job."""
    job = assigned(escrow, actors, ttl=100)
    reverts("DeadlineNotPassed", escrow.send, actors.client, "reclaim", job)
    release(escrow, actors, job)                       # the work finished in time: paid
    travel(actors.w3, 101)
    reverts("WrongState", escrow.send, actors.client, "reclaim", job)


def test_after_the_deadline_only_the_client_reclaims_what_is_held(escrow, actors):
    job = assigned(escrow, actors, ttl=100)
    travel(actors.w3, 101)
    reverts("NotClient", escrow.send, actors.stranger, "reclaim", job)
    before = escrow.w3.eth.get_balance(escrow.address)
    receipt = escrow.send(actors.client, "reclaim", job)
    assert receipt.events[0]["event"] == "Reclaimed" and escrow.job(job).state == EscrowState.RECLAIMED
    assert before - escrow.w3.eth.get_balance(escrow.address) == AMOUNT
    reverts("WrongState", escrow.send, actors.client, "reclaim", job)
    reverts("WrongState", release, escrow, actors, job)


# -- disputes ----------------------------------------------------------------------------------
def test_a_dispute_is_decided_by_the_arbiter_within_its_window(escrow, actors):
    escrow.send(actors.admin, "setDisputeWindows", 600, 3600)
    job = assigned(escrow, actors)
    receipt = release(escrow, actors, job)
    assert receipt.events[0]["event"] == "Verified" and escrow.job(job).state == EscrowState.VERIFIED
    reverts("DisputeWindowOpen", escrow.send, actors.stranger, "finalize", job)
    reverts("NotClient", escrow.send, actors.stranger, "openDispute", job)
    opened = escrow.send(actors.client, "openDispute", job).events[0]
    assert opened["decideBy"] == actors.w3.eth.get_block("latest")["timestamp"] + 3600
    reverts("WrongState", escrow.send, actors.client, "reclaim", job)     # no escape by disputing
    reverts("ArbitrationOpen", escrow.send, actors.client, "settleUndecidedDispute", job)
    reverts("AccessControlUnauthorizedAccount", escrow.send, actors.client, "resolveDispute", job, 7000)
    reverts("BadShare", escrow.send, actors.arbiter, "resolveDispute", job, 10_001)
    worker, client = credit(escrow, actors.worker), credit(escrow, actors.client)
    receipt = escrow.send(actors.arbiter, "resolveDispute", job, 7000)
    event = receipt.events[0]
    assert event["event"] == "DisputeResolved" and event["byDefault"] is False
    assert credit(escrow, actors.worker) - worker == PRICE * 7 // 10
    assert credit(escrow, actors.client) - client == AMOUNT - PRICE * 7 // 10


def test_a_dispute_the_arbiter_never_answers_ends_by_the_default_rule(escrow, actors):
    escrow.send(actors.admin, "setDisputeWindows", 600, 3600)
    job = assigned(escrow, actors)
    release(escrow, actors, job)
    escrow.send(actors.client, "openDispute", job)
    travel(actors.w3, 3601)
    reverts("ArbitrationClosed", escrow.send, actors.arbiter, "resolveDispute", job, 0)
    worker, client = credit(escrow, actors.worker), credit(escrow, actors.client)
    event = escrow.send(actors.stranger, "settleUndecidedDispute", job).events[0]
    assert event["byDefault"] is True and event["toWorker"] == PRICE
    assert credit(escrow, actors.worker) - worker == PRICE
    assert credit(escrow, actors.client) - client == AMOUNT - PRICE
    assert escrow.job(job).state == EscrowState.RESOLVED


def test_windows_are_fixed_when_a_job_is_funded(escrow, actors):
    escrow.send(actors.admin, "setDisputeWindows", 600, 3600)
    job = assigned(escrow, actors)
    escrow.send(actors.admin, "setDisputeWindows", 0, 60)
    assert escrow.job(job).dispute_window == 600 and escrow.job(job).arbitration_window == 3600
    assert release(escrow, actors, job).events[0]["event"] == "Verified"


def test_after_the_window_anyone_finalizes_and_disputes_are_closed(escrow, actors):
    escrow.send(actors.admin, "setDisputeWindows", 600, 3600)
    job = assigned(escrow, actors)
    release(escrow, actors, job)
    travel(actors.w3, 601)
    reverts("DisputeWindowClosed", escrow.send, actors.client, "openDispute", job)
    before = credit(escrow, actors.worker)
    escrow.send(actors.stranger, "finalize", job)
    assert credit(escrow, actors.worker) - before == PRICE


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
    escrow.send(actors.admin, "setFee", 100, actors.treasury.address)
    q, signature = quote(escrow, actors, amount=2_000_000, token=token_address)
    reverts("TokenNotAllowed", tokens.fund, actors.client, q, signature)
    escrow.send(actors.admin, "setTokenAllowed", token_address, True)
    client_eth = balance(actors, actors.client)
    receipt = tokens.fund(actors.client, q, signature)       # approves exactly, then funds
    escrow.send(actors.router, "assign", q.job_key, actors.worker.address, 1_500_000)
    release(escrow, actors, q.job_key)
    tokens_of = lambda who: token.functions.balanceOf(who).call()   # noqa: E731
    for account in (actors.worker, actors.client):
        escrow.send(account, "withdraw", token_address)
    assert tokens_of(actors.client.address) == 5_000_000 - 1_500_000   # charged the price only
    assert tokens_of(actors.worker.address) == 1_500_000 - 15_000      # the price less 1 %
    assert tokens_of(escrow.address) == 15_000 == escrow.contract.functions.feesAccrued(token_address).call()
    gas_paid = client_eth - balance(actors, actors.client)
    assert gas_paid > 0 and gas_paid < 3 * receipt.gas_used * 10**11  # its ETH moved by gas only


# -- reentrancy --------------------------------------------------------------------------------
def test_a_receiver_that_re_enters_is_paid_at_most_once(escrow, actors):
    malicious = chain.deploy(actors.w3, actors.admin, "MaliciousReceiver", escrow.address)
    attacker = actors.w3.eth.contract(address=malicious, abi=chain.artifact("MaliciousReceiver")["abi"])
    q, signature = quote(escrow, actors, client=type("C", (), {"address": malicious}), duration=600)
    job = q.job_key

    def call(fn, *args, value=0):
        tx = getattr(attacker.functions, fn)(*args).build_transaction({
            "from": actors.stranger.address, "value": value,
            "nonce": actors.w3.eth.get_transaction_count(actors.stranger.address)})
        h = actors.w3.eth.send_raw_transaction(actors.stranger.sign_transaction(tx).raw_transaction)
        return actors.w3.eth.wait_for_transaction_receipt(h)

    call("aim", job)
    call("fundTarget", q.duration, q.expiry, signature, value=AMOUNT)
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
