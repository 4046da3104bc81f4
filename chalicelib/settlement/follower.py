"""The chain follower: the escrow's logs, read in chain order from a configured start block
in bounded ranges, each applied once it is confirmed — fundings (which route the job),
assignments, releases, refunds, reclaims, disputes and their resolutions. Funding is learned
from the chain, never from the client's word."""
from __future__ import annotations

from aws_lambda_powertools import Logger

from chalicelib.context import Ports
from chalicelib.jobs import states
from chalicelib.jobs.lifecycle import apply, assign
from chalicelib.market.routing import MARKETPLACE_CLASSES
from chalicelib.market.workers import observe
from chalicelib.media import profiles
from chalicelib.models import Job, State
from chalicelib.settlement import pricing
from chalicelib.settlement import rules as settlement
from chalicelib.settlement.payments import charged_terms, charges, noted
from chalicelib.settlement.pricing import PriceAboveCeiling
from chalicelib.telemetry import metrics

logger = Logger(child=True)
CURSOR = "chain:escrow"
MAX_RANGES = 20              # log ranges one run reads before it yields to the next


def follow_chain(ports: Ports) -> int:
    """Apply the escrow's logs since the last processed block, in chain order: fundings,
    assignments, releases, refunds, reclaims, disputes and their resolutions. Starts at
    the configured block, reads bounded ranges, and takes a block only once it has
    `chain_confirmations` blocks on top (a funding in a block that is reorged away is never
    applied). Returns how many logs matched a job.

    Measures `ChainFollowerLagBlocks`: the confirmed blocks not applied yet when the run
    ends (0 once it caught up; unconfirmed blocks are not lag, they wait by design)."""
    escrow, s = ports.chain.escrow, ports.settings
    head = escrow.w3.eth.block_number - s.chain_confirmations
    # Per chain and contract: a new deployment is followed from its own start block.
    cursor = f"{CURSOR}:{s.chain_id}:{escrow.address}"
    matched, applied = 0, s.chain_start_block - 1
    for _ in range(MAX_RANGES):
        previous = ports.store.cursor(cursor)
        start = s.chain_start_block if previous is None else previous + 1
        applied = start - 1
        end = min(head, start + s.chain_log_range - 1)
        if end < start:
            break
        for log in escrow.logs(FOLLOWED, start, end):
            job_id = ports.store.resolve(f"escrow:0x{log['args']['jobId'].hex()}")
            if job_id is not None:
                matched += 1
                FOLLOWED[log["event"]](ports, ports.store.get(job_id), log)
        if not ports.store.advance_cursor(cursor, previous, end):
            break                             # another follower moved it: it has this range
        applied = end
    metrics.add("ChainFollowerLagBlocks", max(0, head - applied), "Count")
    return matched


def lag_blocks(ports: Ports) -> int:
    """Confirmed blocks the follower has not applied yet (what `follow_chain` measures)."""
    escrow, s = ports.chain.escrow, ports.settings
    head = escrow.w3.eth.block_number - s.chain_confirmations
    applied = ports.store.cursor(f"{CURSOR}:{s.chain_id}:{escrow.address}")
    return max(0, head - (s.chain_start_block - 1 if applied is None else applied))


def _log_data(log) -> dict:
    return {"tx_hash": log["transactionHash"].to_0x_hex(), "block": log["blockNumber"]}


def on_dispute_opened(ports: Ports, job: Job, log) -> Job | None:
    """The client contests a verified result inside its window: nothing is paid until the
    arbiter resolves it on chain."""
    data = {**_log_data(log), "client": log["args"]["client"]}
    moved = apply(ports, job, lambda j: _moved(ports, j, State.VERIFIED, State.DISPUTED,
                                               "dispute.opened", data))
    if moved is not None:
        observe(ports.workers, moved.worker, moved.kind, "disputed", now=ports.clock())
    return moved


def on_dispute_resolved(ports: Ports, job: Job, log) -> Job | None:
    args = log["args"]
    data = {**_log_data(log), "worker_share_bps": args["workerShareBps"],
            "to_worker": str(args["toWorker"]), "to_client": str(args["toClient"]),
            "by_default": args["byDefault"]}
    return apply(ports, job, lambda j: _moved(
        ports, j, State.DISPUTED, State.SETTLED, "settlement.resolved", data,
        escrow=j.escrow.model_copy(update={"charged": j.escrow.amount - args["toClient"],
                                           "refunded": args["toClient"]})))


def on_released(ports: Ports, job: Job, log) -> Job | None:
    """A release seen on chain: ours (already recorded, so nothing to do) or a `finalize`
    anyone may send once a dispute window passed."""
    args = log["args"]
    data = {**_log_data(log), "worker": args["worker"], **charges(args), "note": "seen on chain"}
    return apply(ports, job, lambda j: _moved(ports, j, State.VERIFIED, State.SETTLED,
                                              "settlement.released", data,
                                              escrow=charged_terms(j.escrow, args)))


def _moved(ports: Ports, job: Job, source: State, target: State, event: str, data: dict,
           **changes):
    if job.state != source:
        return None                         # recorded already, or the log was read again
    moved, e = states.transition(job, target, at=ports.clock(), event=event, data=data,
                                 **changes)
    return moved, [e], []


def on_funded(ports: Ports, job: Job, log) -> Job | None:
    now = ports.clock()
    args = log["args"]
    funding = {"tx_hash": log["transactionHash"].to_0x_hex(), "block": log["blockNumber"],
               "client": args["client"], "token": args["token"], "amount": str(args["amount"]),
               "deadline": args["deadline"]}
    job_class = ports.catalog.job_class(job.kind)
    marketplace = _marketplace_inputs(ports, job_class, now)

    def plan(j: Job):
        terms = j.escrow.model_copy(update={"funded_by": args["client"],
                                            "funded_tx": funding["tx_hash"],
                                            "deadline": args["deadline"]})
        if j.state.terminal and not j.escrow.funded_tx:  # funded after it ended: given back
            late, event = states.note(j, "escrow.funded", at=now, data={**funding, "late": True})
            return late.model_copy(update={"escrow": terms}), [event], []
        if j.state != State.REQUESTED:
            return None                              # seen before: the follower re-read a block
        problem = settlement.funding_problem(j.escrow, args["client"], args["token"],
                                             args["amount"])
        if problem:
            failed, event = states.transition(j, State.FAILED, at=now, escrow=terms,
                                              reason="funding_insufficient",
                                              data={**funding, "reason": "funding_insufficient",
                                                    "message": problem})
            return failed, [event], []
        funded, e1 = states.transition(j, State.FUNDED, at=now, escrow=terms, data=funding)
        assigned, attempt, e2 = assign(funded, job_class, now, **marketplace)
        try:                # a model job's price is known now; a transcode's once it is planned
            price = pricing.price(assigned, job_class)
        except PriceAboveCeiling as over:
            failed, e3 = states.transition(funded, State.FAILED, at=now, reason=over.reason,
                                           data=over.to_dict())
            return failed, [e1, e3], []
        priced = assigned.escrow.model_copy(update={"price": price})
        return assigned.model_copy(update={"escrow": priced}), [e1, e2], [attempt]

    return apply(ports, job, plan)       # the bus sends assign (or refund) and dispatches


def on_reclaimed(ports: Ports, job: Job, log) -> Job | None:
    """The client took its funds back after the deadline: the job stops where it is, and
    nothing it made is handed out (its outputs were not paid for)."""
    data = {**_log_data(log), "amount": str(log["args"]["amount"])}

    def plan(j: Job):
        if any(e.type == "settlement.reclaimed" for e in ports.store.view(j.job_id).events):
            return None
        terms = j.escrow.model_copy(update={"refunded": log["args"]["amount"]})
        if j.state.terminal:
            recorded, event = states.note(j, "settlement.reclaimed", at=ports.clock(), data=data)
            return recorded.model_copy(update={"escrow": terms}), [event], []
        failed, event = states.transition(j, State.FAILED, at=ports.clock(), escrow=terms,
                                          event="settlement.reclaimed", reason="reclaimed",
                                          data={**data, "reason": "reclaimed"})
        return failed, [event], []
    return apply(ports, job, plan)


def on_refunded(ports: Ports, job: Job, log) -> Job | None:
    """A refund seen on chain that this control plane did not record (sent by another
    process, or recorded before a crash)."""
    data = {**_log_data(log), "amount": str(log["args"]["amount"]), "note": "seen on chain"}

    def plan(j: Job):
        if any(e.type == "settlement.refunded" for e in ports.store.view(j.job_id).events):
            return None
        return noted(j, ports, "settlement.refunded", data, escrow=j.escrow.model_copy(
            update={"refunded": log["args"]["amount"]}))
    return apply(ports, job, plan)


def on_assigned(ports: Ports, job: Job, log) -> Job | None:
    """An assignment seen on chain: recorded already when this control plane sent it; a
    re-assignment sent elsewhere is put on the timeline."""
    args = log["args"]
    tx = log["transactionHash"].to_0x_hex()

    def plan(j: Job):
        ours = (j.escrow.payee or "").lower() == args["worker"].lower()
        if ours or any(e.data.get("tx_hash") == tx for e in ports.store.view(j.job_id).events):
            return None            # this control plane sent it and recorded it already
        event = "escrow.reassigned" if args["assignment"] > 1 else "escrow.assigned"
        return noted(j, ports, event, {**_log_data(log), "worker": args["worker"],
                                        "price": str(args["price"]), "note": "seen on chain"},
                      escrow=j.escrow.model_copy(update={"payee": args["worker"],
                                                         "price": args["price"]}))
    return apply(ports, job, plan)


def _marketplace_inputs(ports: Ports, job_class, now) -> dict:
    """Marketplace workers compete for escrow jobs of the classes they can lease."""
    if job_class.name not in MARKETPLACE_CLASSES or ports.workers is None:
        return {}
    return {"candidates": ports.workers.candidates(now),
            "pool_price": profiles.default_profiles().pricing.compute_per_megapixel_second,
            "heartbeat_ttl_s": ports.settings.heartbeat_ttl_s}


FOLLOWED = {"Funded": on_funded, "Assigned": on_assigned, "DisputeOpened": on_dispute_opened,
            "DisputeResolved": on_dispute_resolved, "Released": on_released,
            "Refunded": on_refunded, "Reclaimed": on_reclaimed}


