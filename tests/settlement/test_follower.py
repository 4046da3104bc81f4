"""The chain follower as a real chain needs it, against its own anvil: it starts at the
configured block, applies a log only once it is confirmed (a funding reorged away before then
is never applied), reads bounded ranges, and reconciliation walks every open escrow."""
import dataclasses
import uuid

import pytest

from chalicelib.context import ChainPorts
from chalicelib.identity.signing import did_for
from chalicelib.jobs import lifecycle as jobs
from chalicelib.models import Manifest, State
from chalicelib.settlement import chain as chain_adapter
from chalicelib.settlement import follower as chain_follower
from chalicelib.settlement import payments
from chalicelib.settlement.chain import Escrow
from chalicelib.settlement.escrow import quote_of
from proofline.anvil import Anvil
from proofline.devstack import free_port

pytestmark = pytest.mark.stack
CONFIRMATIONS = 3


class RecordingQueues:
    def __init__(self):
        self.sent = []

    def send(self, queue, message):
        self.sent.append((queue, message))


@pytest.fixture(scope="module")
def node():
    # Blocks only when asked for: a reverted snapshot then drops its transactions for good.
    anvil = Anvil(free_port(), block_time=None).start()
    yield anvil
    anvil.stop()


@pytest.fixture()
def follower(ports, node, stored_clip):
    """The stack's store and catalog, this module's chain and escrow (a fresh deployment,
    so a fresh cursor), and queues that only record: nothing is dispatched."""
    w3 = node.web3()
    # Deployed by an account the stack's own chain never deploys from: the two anvils share
    # a chain id, and the follower's cursor is per chain and contract.
    admin, router, verifier, refunder, client = (node.accounts[i] for i in (8, 1, 4, 5, 3))
    escrow = Escrow(w3, chain_adapter.deploy(w3, admin, "ProoflineEscrow", admin.address,
                                             admin.address))
    for role, who in (("ROUTER_ROLE", router), ("VERIFIER_ROLE", verifier),
                      ("OPERATOR_ROLE", refunder)):
        escrow.send(admin, "grantRole", getattr(escrow.contract.functions, role)().call(),
                    who.address)
    start = w3.eth.block_number
    settings = ports.settings.model_copy(update=dict(
        chain_id=node.chain_id, chain_start_block=start, chain_confirmations=CONFIRMATIONS,
        chain_log_range=2))
    held = dataclasses.replace(
        ports, settings=settings, queues=RecordingQueues(),
        chain=ChainPorts(escrow=escrow,
                         keys={"router": router, "verifier": verifier, "operator": refunder}.get,
                         payouts=lambda: {"media": admin.address, "inference": admin.address}))
    return dataclasses.make_dataclass("Follower", ["ports", "w3", "escrow", "client", "start"])(
        held, w3, escrow, client, start)


@pytest.fixture(scope="module")
def stored_clip(client_api, clip):
    return client_api.upload(clip)


def new_job(f, stored_clip):
    manifest = Manifest(kind="media_probe", input_uri=stored_clip["input_uri"],
                        input_hash=stored_clip["input_hash"],
                        client_did=did_for(f.client.address, f.w3.eth.chain_id),
                        payment_policy="escrow_before_start", max_price="0.01")
    job, _ = jobs.accept(f.ports, manifest, job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    return job


def fund(f, job):
    return f.escrow.fund(f.client, quote_of(job.escrow),
                         bytes.fromhex(job.escrow.quote_signature[2:]))


def mine(f, blocks):
    for _ in range(blocks):
        f.w3.provider.make_request("evm_mine", [])


def state(f, job) -> State:
    return f.ports.store.get(job.job_id).state


def test_a_funding_reorged_away_before_it_is_confirmed_is_never_applied(follower, stored_clip):
    f = follower
    job = new_job(f, stored_clip)
    snapshot = f.w3.provider.make_request("evm_snapshot", [])["result"]
    fund(f, job)
    chain_follower.follow_chain(f.ports)                    # seen, but not yet confirmed
    assert state(f, job) == State.REQUESTED
    f.w3.provider.make_request("evm_revert", [snapshot])     # the block is reorged away
    mine(f, CONFIRMATIONS + 2)
    chain_follower.follow_chain(f.ports)
    assert state(f, job) == State.REQUESTED           # the phantom funding never counted
    receipt = fund(f, job)                            # the funding that stays on the chain
    mine(f, CONFIRMATIONS)
    while f.ports.store.cursor(f"chain:escrow:{f.ports.settings.chain_id}:{f.escrow.address}") < receipt.block:
        chain_follower.follow_chain(f.ports)
    assert state(f, job) == State.ASSIGNED
    funded = [e for e in f.ports.store.view(job.job_id).events if e.type == "escrow.funded"]
    assert [e.data["tx_hash"] for e in funded] == [receipt.tx_hash]


def test_the_follower_starts_at_the_configured_block_and_reads_bounded_ranges(follower):
    f = follower
    cursor = f"chain:escrow:{f.ports.settings.chain_id}:{f.escrow.address}"
    assert f.ports.store.cursor(cursor) is None
    mine(f, 100)
    chain_follower.follow_chain(f.ports)
    first = f.ports.store.cursor(cursor)
    # One run reads at most MAX_RANGES ranges of chain_log_range blocks, from the start block.
    assert first == f.start + chain_follower.MAX_RANGES * 2 - 1
    chain_follower.follow_chain(f.ports)
    assert f.ports.store.cursor(cursor) == first + chain_follower.MAX_RANGES * 2


def test_reconcile_walks_every_open_escrow_and_only_those(follower, stored_clip):
    f = follower
    unfunded, funded = new_job(f, stored_clip), new_job(f, stored_clip)
    fund(f, funded)
    open_ids = {j.job_id for j in f.ports.store.open_escrows()}
    assert {unfunded.job_id, funded.job_id} <= open_ids
    # Cancelled before any funding and past its quote: it can never be funded; it leaves.
    jobs.cancel(f.ports, unfunded.job_id)
    late = dataclasses.replace(f.ports, clock=lambda: unfunded.created_at.replace(
        year=unfunded.created_at.year + 1))
    rows = {r["job_id"]: r for r in payments.reconcile(late)}
    assert unfunded.job_id not in {j.job_id for j in f.ports.store.open_escrows()}
    # Funded on chain, never seen by a follower here: drift the follower will pick up.
    assert rows[funded.job_id]["kind"] == "funded_not_seen"
