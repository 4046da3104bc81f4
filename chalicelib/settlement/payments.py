"""Settlement services: learn of funding from the chain, and move money after committed
state changes — release verified jobs, refund failed or cancelled ones.

Every action reads the escrow's on-chain state first, so a duplicate message, a retry after
an RPC outage or a second handler never pays twice (invariant 2); a release is sent only
with a `validation.passed` on the timeline for exactly the outputs paid for (invariant 1).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from aws_lambda_powertools import Logger

from chalicelib.bus import Committed
from chalicelib.context import Ports
from chalicelib.jobs import states
from chalicelib.jobs.lifecycle import apply, assign
from chalicelib.market.routing import MARKETPLACE_CLASSES
from chalicelib.market.workers import observe
from chalicelib.media import profiles
from chalicelib.models import Job, State
from chalicelib.settlement import pricing
from chalicelib.settlement import rules as settlement
from chalicelib.settlement.chain import ContractReverted, EscrowState
from chalicelib.settlement.escrow import job_key_bytes, result_hash
from chalicelib.settlement.pricing import PriceAboveCeiling
from chalicelib.settlement.reconcile import classify

logger = Logger(child=True)
CURSOR = "chain:escrow"
MAX_RANGES = 20              # log ranges one run reads before it yields to the next
DUE_AGAIN = timedelta(minutes=1)
MAX_ASSIGNMENTS = 2          # the contract's: the first assignment and one re-assignment


def follow_chain(ports: Ports) -> int:
    """Apply the escrow's logs since the last processed block, in chain order: fundings,
    assignments, releases, refunds, reclaims, disputes and their resolutions. Starts at
    the configured block, reads bounded ranges, and takes a block only once it has
    `chain_confirmations` blocks on top (a funding in a block that is reorged away is never
    applied). Returns how many logs matched a job."""
    escrow, s = ports.chain.escrow, ports.settings
    head = escrow.w3.eth.block_number - s.chain_confirmations
    # Per chain and contract: a new deployment is followed from its own start block.
    cursor = f"{CURSOR}:{s.chain_id}:{escrow.address}"
    matched = 0
    for _ in range(MAX_RANGES):
        previous = ports.store.cursor(cursor)
        start = s.chain_start_block if previous is None else previous + 1
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
    return matched


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
    data = {**_log_data(log), "worker": args["worker"], **_charges(args), "note": "seen on chain"}
    return apply(ports, job, lambda j: _moved(ports, j, State.VERIFIED, State.SETTLED,
                                              "settlement.released", data,
                                              escrow=_charged(j.escrow, args)))


def _moved(ports: Ports, job: Job, source: State, target: State, event: str, data: dict,
           **changes):
    if job.state != source:
        return None                         # recorded already, or the log was read again
    moved, e = states.transition(job, target, at=ports.clock(), event=event, data=data,
                                 **changes)
    return moved, [e], []


def _charges(released: dict) -> dict:
    """A `Released` event's money, as the timeline shows it (base units, exact strings)."""
    return {"charged": str(released["paid"] + released["fee"]), "paid": str(released["paid"]),
            "fee": str(released["fee"]), "refunded": str(released["change"])}


def _charged(terms, released: dict):
    return terms.model_copy(update={"charged": released["paid"] + released["fee"],
                                    "fee": released["fee"], "refunded": released["change"]})


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
            noted, event = states.note(j, "escrow.funded", at=now, data={**funding, "late": True})
            return noted.model_copy(update={"escrow": terms}), [event], []
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
            noted, event = states.note(j, "settlement.reclaimed", at=ports.clock(), data=data)
            return noted.model_copy(update={"escrow": terms}), [event], []
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
        return _noted(j, ports, "settlement.refunded", data, escrow=j.escrow.model_copy(
            update={"refunded": log["args"]["amount"]}))
    return apply(ports, job, plan)


def on_assigned(ports: Ports, job: Job, log) -> Job | None:
    """An assignment seen on chain: recorded already when this control plane sent it; a
    re-assignment sent elsewhere is put on the timeline."""
    args = log["args"]
    tx = log["transactionHash"].to_0x_hex()

    def plan(j: Job):
        if any(e.data.get("tx_hash") == tx for e in ports.store.view(j.job_id).events):
            return None
        event = "escrow.reassigned" if args["assignment"] > 1 else "escrow.assigned"
        return _noted(j, ports, event, {**_log_data(log), "worker": args["worker"],
                                        "price": str(args["price"]), "note": "seen on chain"},
                      escrow=j.escrow.model_copy(update={"payee": args["worker"],
                                                         "price": args["price"]}))
    return apply(ports, job, plan)


def request_settlement(ports: Ports, committed: Committed) -> None:
    """After commit, money follows state: a funded job is assigned on chain (refunded if it
    ended before the funding arrived), a verified one released, a funded one that ended
    otherwise refunded. The settlement handler is idempotent towards the chain."""
    after = committed.after
    if after.escrow is None:
        return
    if committed.wrote("escrow.funded"):
        if after.state.terminal:
            _send(ports, "refund", after)
        elif after.state == State.ASSIGNED:
            _send(ports, "assign", after)
        return
    if committed.wrote("segments.planned") and after.escrow.price is not None:
        _send(ports, "assign", after)         # a transcode's price is fixed once it is planned
    if not committed.moved():
        return
    if after.state == State.VERIFIED:
        _send(ports, "release", after)
    elif after.state in (State.FAILED, State.CANCELLED) and after.escrow.funded_tx:
        _send(ports, "refund", after)


def _send(ports: Ports, action: str, job: Job) -> None:
    ports.queues.send("settlement", {"action": action, "job_id": job.job_id})


FOLLOWED = {"Funded": on_funded, "Assigned": on_assigned, "DisputeOpened": on_dispute_opened,
            "DisputeResolved": on_dispute_resolved, "Released": on_released,
            "Refunded": on_refunded, "Reclaimed": on_reclaimed}


def settle(ports: Ports, action: str, job_id: str) -> str:
    """Carry out one settlement action; returns what happened. The RPC provider retries
    with backoff (ports.RPC_RETRIES); past that this raises and the queue redelivers."""
    return ACTIONS[action](ports, ports.store.view(job_id))


def _marketplace_inputs(ports: Ports, job_class, now) -> dict:
    """Marketplace workers compete for escrow jobs of the classes they can lease."""
    if job_class.name not in MARKETPLACE_CLASSES or ports.workers is None:
        return {}
    return {"candidates": ports.workers.candidates(now),
            "pool_price": profiles.default_profiles().pricing.compute_per_megapixel_second,
            "heartbeat_ttl_s": ports.settings.heartbeat_ttl_s}


def _assign_on_chain(ports: Ports, view, on_chain=None) -> str:
    """Tell the escrow who will be paid and how much: the job's payee at its price. A payee
    that changed (the work moved after a lapse or a caught cheat) is re-assigned, once."""
    job, chain = view.job, ports.chain
    if job.escrow.price is None:
        return "price not fixed yet"
    key = job_key_bytes(job)
    on_chain = on_chain or chain.escrow.job(key)
    payee = settlement.payee(job.worker, chain.pool_payout)
    if on_chain.state == EscrowState.ASSIGNED and on_chain.worker.lower() == payee.lower():
        return "already assigned"
    if on_chain.state not in (EscrowState.FUNDED, EscrowState.ASSIGNED):
        return f"escrow is {on_chain.state.name}; nothing to assign"
    if on_chain.assignments >= MAX_ASSIGNMENTS:
        return "re-assigned once already; the payee stays"
    receipt = chain.escrow.send(chain.router, "assign", key, payee, job.escrow.price)
    event = "escrow.reassigned" if on_chain.state == EscrowState.ASSIGNED else "escrow.assigned"
    apply(ports, ports.store.get(job.job_id), lambda j: _noted(
        j, ports, event, {**receipt.as_event(), "worker": payee, "price": str(j.escrow.price),
                          "symbol": j.escrow.symbol},
        escrow=j.escrow.model_copy(update={"payee": payee})))
    return "reassigned" if event == "escrow.reassigned" else "assigned"


def _ask_countersignature(ports: Ports, view, hashes: list[str]) -> str:
    """A marketplace payee signs the verified package itself (it holds its own key): offer
    it the signature with its next lease; its countersign re-sends this release. A payee
    silent for `countersign_s` forfeits: the client is refunded (the chain pays only the
    payee's signature, so nobody else can be paid instead)."""
    job, now = view.job, ports.clock()
    asked = next((e for e in view.events if e.type == "settlement.awaiting_signature"), None)
    if asked is None:
        ports.tasks.ask_signature(job.worker, job.job_id)
        due = now + timedelta(seconds=ports.settings.countersign_s)
        apply(ports, job, lambda j: _noted(j, ports, "settlement.awaiting_signature", {
            "worker": job.worker, "outputs": hashes, "until": due.isoformat(),
            "result_hash": "0x" + result_hash(hashes).hex()}, next_deadline=due))
        return "awaiting signature"
    if (now - asked.at).total_seconds() < ports.settings.countersign_s:
        ports.tasks.ask_signature(job.worker, job.job_id)
        return "awaiting signature"
    return _forfeit(ports, job)


def _forfeit(ports: Ports, job: Job) -> str:
    chain = ports.chain
    receipt = chain.escrow.send(chain.operator, "refund", job_key_bytes(job))
    ports.tasks.signature_given(job.worker, job.job_id)
    data = {**receipt.as_event(), "amount": str(job.escrow.amount), "worker": job.worker,
            "reason": "payee_did_not_countersign"}

    def plan(j: Job):
        if j.state != State.VERIFIED:
            return None
        settled, event = states.transition(
            j, State.SETTLED, at=ports.clock(), event="settlement.forfeited", data=data,
            escrow=j.escrow.model_copy(update={"charged": 0, "refunded": j.escrow.amount}))
        return settled, [event], []
    if apply(ports, job, plan) is not None:
        observe(ports.workers, job.worker, job.kind, "timeout", now=ports.clock())
    return "forfeited"


def _release(ports: Ports, view) -> str:
    job, chain = view.job, ports.chain
    if job.state == State.SETTLED:
        return "already settled"
    if job.state != State.VERIFIED:
        return f"not releasable in state {job.state}"
    try:
        hashes = settlement.release_evidence(job, view.events)
    except settlement.ReleaseBlocked as blocked:
        # Permanent until a person looks: say so on the timeline once, never pay, never retry.
        why = blocked.to_dict()
        if not any(e.type == "settlement.blocked" for e in view.events):
            apply(ports, job, lambda j: _noted(j, ports, "settlement.blocked", why))
        logger.error("release blocked", extra={"job_id": job.job_id, "why": why["message"]})
        return "blocked"
    key = job_key_bytes(job)
    record = chain.escrow.job(key)
    if record.state in (EscrowState.FUNDED, EscrowState.ASSIGNED):
        outcome = _assign_on_chain(ports, view, record)   # the payee and price, first
        if outcome in ("assigned", "reassigned"):
            record = chain.escrow.job(key)
    on_chain, changes = record.state, {}
    if on_chain == EscrowState.ASSIGNED:
        attempt = next(a for a in view.attempts if a.number == job.attempt)
        if attempt.signature is None:
            return _ask_countersignature(ports, view, hashes)
        receipt = chain.escrow.send(chain.verifier, "release", key, result_hash(hashes),
                                    bytes.fromhex(attempt.signature.removeprefix("0x")))
        data = {**receipt.as_event(), "result_hash": "0x" + result_hash(hashes).hex(),
                "outputs": hashes, "worker": attempt.worker}
        verified = next((e for e in receipt.events if e["event"] == "Verified"), None)
        if verified:
            # A dispute window holds the payment on chain; the sweeper comes back when it ends.
            due = datetime.fromtimestamp(verified["releasableAt"], timezone.utc)
            apply(ports, job, lambda j: _noted(j, ports, "settlement.scheduled",
                                               {**data, "releasable_at": due.isoformat()},
                                               next_deadline=due))
            return "scheduled"
        released = next(e for e in receipt.events if e["event"] == "Released")
        data.update(_charges(released))
        changes = {"escrow": _charged(job.escrow, released)}
    elif on_chain == EscrowState.VERIFIED:
        try:
            receipt = chain.escrow.send(chain.verifier, "finalize", key)
        except ContractReverted as refused:
            if refused.error == "DisputeWindowOpen":
                return "dispute window open"
            raise
        released = next(e for e in receipt.events if e["event"] == "Released")
        data = {**receipt.as_event(), "outputs": hashes, "note": "dispute window passed",
                **_charges(released)}
        changes = {"escrow": _charged(job.escrow, released)}
    elif on_chain == EscrowState.RELEASED:
        data = {"tx_hash": chain.escrow.released_tx(key), "outputs": hashes,
                "note": "found released on chain"}
    else:
        return f"escrow is {on_chain.name}; nothing to release"

    def plan(j: Job):
        if j.state != State.VERIFIED:
            return None
        settled, event = states.transition(j, State.SETTLED, at=ports.clock(),
                                           event="settlement.released", data=data, **changes)
        return settled, [event], []
    apply(ports, job, plan)
    return "released"


def _refund(ports: Ports, view) -> str:
    job, chain = view.job, ports.chain
    if any(e.type == "settlement.refunded" for e in view.events):
        return "already refunded"
    key = job_key_bytes(job)
    on_chain = chain.escrow.job(key).state
    if on_chain in (EscrowState.FUNDED, EscrowState.ASSIGNED):
        receipt = chain.escrow.send(chain.operator, "refund", key)
        data = {**receipt.as_event(), "amount": str(job.escrow.amount)}
    elif on_chain in (EscrowState.REFUNDED, EscrowState.RECLAIMED):
        data = {"note": f"found {on_chain.name.lower()} on chain"}
    else:
        return f"escrow is {on_chain.name}; nothing to refund"
    apply(ports, job, lambda j: _noted(j, ports, "settlement.refunded", data,
                                       escrow=j.escrow.model_copy(
                                           update={"refunded": j.escrow.amount, "charged": 0})))
    return "refunded"


def _noted(job: Job, ports: Ports, event: str, data: dict, **changes):
    noted, e = states.note(job, event, at=ports.clock(), data=data)
    return noted.model_copy(update=changes), [e], []


def release_due(ports: Ports, job: Job) -> Job | None:
    """The sweeper's remedy for a verified escrow job whose release time came: ask the
    settlement handler again (it finalizes, or finds the job settled) and look back later."""
    now = ports.clock()

    def plan(j: Job):
        if j.state != State.VERIFIED or j.next_deadline is None or j.next_deadline > now:
            return None
        return _noted(j, ports, "settlement.due", {}, next_deadline=now + DUE_AGAIN)
    moved = apply(ports, job, plan)
    if moved:
        ports.queues.send("settlement", {"action": "release", "job_id": job.job_id})
    return moved


ACTIONS = {"assign": _assign_on_chain, "release": _release, "refund": _refund}


def reconcile(ports: Ports, *, repair: bool = False) -> list[dict]:
    """Compare every escrow job whose money is not final with the chain (the open-escrow
    index: every one, not the newest few); with `repair`, re-send the settlement action for
    each drift that has a safe one. A job that ended unfunded and whose quote expired can
    never be funded: it leaves the index. Returns the drift rows."""
    rows = []
    now_s = ports.clock().timestamp()
    for job in ports.store.open_escrows():
        seen = {e.type for e in ports.store.view(job.job_id).events}
        on_chain = ports.chain.escrow.job(job_key_bytes(job)).state
        drift = classify(job.job_id, job.state, bool(job.escrow.funded_tx),
                         "settlement.refunded" in seen, on_chain,
                         blocked="settlement.blocked" in seen)
        if drift is None:
            if (job.state.terminal and on_chain == EscrowState.NONE
                    and now_s > (job.escrow.quote_expiry or 0)):
                ports.store.close_escrow(job.job_id)
            continue
        row = drift.as_row()
        if repair and drift.repair:
            ports.queues.send("settlement", {"action": drift.repair, "job_id": job.job_id})
            row["repaired"] = True
        rows.append(row)
    return rows
