"""Settlement services: move money after committed state changes — assign funded jobs at
their price, release verified ones, refund failed or cancelled ones — and reconcile the
records with the chain. (What the chain says happened is read by `settlement.follower`.)

Every action reads the escrow's on-chain state first, so a duplicate message, a retry after
an RPC outage or a second handler never pays twice (invariant 2); a release is sent only
with a `validation.passed` on the timeline for exactly the outputs paid for (invariant 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from aws_lambda_powertools import Logger

from chalicelib.bus import Committed
from chalicelib.context import Ports
from chalicelib.jobs import states
from chalicelib.jobs.lifecycle import apply
from chalicelib.market.workers import observe
from chalicelib.models import Job, State
from chalicelib.settlement import rules as settlement
from chalicelib.settlement.chain import ContractReverted, EscrowState
from chalicelib.settlement.escrow import job_key_bytes, result_hash
from chalicelib.settlement.reconcile import classify
from chalicelib.telemetry import metrics

logger = Logger(child=True)
DUE_AGAIN = timedelta(minutes=1)
MAX_ASSIGNMENTS = 2          # the contract's: the first assignment and one re-assignment


def charges(released: dict) -> dict:
    """A `Released` event's money, as the timeline shows it (base units, exact strings)."""
    return {"charged": str(released["paid"] + released["fee"]), "paid": str(released["paid"]),
            "fee": str(released["fee"]), "refunded": str(released["change"])}


def charged_terms(terms, released: dict):
    return terms.model_copy(update={"charged": released["paid"] + released["fee"],
                                    "fee": released["fee"], "refunded": released["change"]})


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
        return
    before = committed.before
    if (after.escrow.funded_tx and before is not None and before.worker
            and after.worker != before.worker and not after.state.terminal):
        _send(ports, "assign", after)         # the payee moved: the escrow is re-assigned
        return
    if not committed.moved():
        return
    if after.state == State.VERIFIED:
        _send(ports, "release", after)
    elif after.state in (State.FAILED, State.CANCELLED) and after.escrow.funded_tx:
        _send(ports, "refund", after)


def _send(ports: Ports, action: str, job: Job) -> None:
    ports.queues.send("settlement", {"action": action, "job_id": job.job_id})


def settle(ports: Ports, action: str, job_id: str) -> str:
    """Carry out one settlement action; returns what happened. The RPC provider retries
    with backoff (ports.RPC_RETRIES); past that this raises and the queue redelivers."""
    return ACTIONS[action](ports, ports.store.view(job_id))


def settle_batch(ports: Ports, requests: list[tuple[str, str]]) -> list[str | Exception]:
    """Carry out many settlement actions (action, job id) at once, as the settlement queue
    delivers them: the assignments that are due go out as one `assignBatch`, then the
    releases that are ready as one `releaseBatch`; refunds and the rest one by one. Returns
    each request's outcome, or the exception that failed it (the queue redelivers those)."""
    outcomes: list[str | Exception | None] = [None] * len(requests)
    # Assigns first: a release in the same batch often needs its job's assign on chain.
    for action in ("assign", "release"):
        indexes = [i for i, (a, _) in enumerate(requests) if a == action]
        if not indexes:
            continue
        batch = {}
        for i in indexes:
            job_id = requests[i][1]
            try:
                prepared = PREPARE[action](ports, ports.store.view(job_id))
            except Exception as exc:  # noqa: BLE001 - this request alone is retried
                outcomes[i] = exc
                continue
            if isinstance(prepared, str):
                outcomes[i] = prepared
            elif job_id in batch:
                outcomes[i] = "sent in this batch"
            else:
                batch[job_id] = (i, prepared)
        for job_id, outcome in SEND_MANY[action](ports, [p for _, p in batch.values()]).items():
            outcomes[batch[job_id][0]] = outcome
    for i, (action, job_id) in enumerate(requests):
        if outcomes[i] is None:
            try:
                outcomes[i] = settle(ports, action, job_id)
            except Exception as exc:  # noqa: BLE001 - this request alone is retried
                outcomes[i] = exc
    return outcomes


# -- assignment ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DueAssignment:
    job_id: str
    key: bytes
    payee: str
    price: int
    reassign: bool


def _assign_on_chain(ports: Ports, view, on_chain=None) -> str:
    """Tell the escrow who will be paid and how much: the job's payee at its price. A payee
    that changed (the work moved after a lapse or a caught cheat) is re-assigned, once."""
    due = _due_assignment(ports, view, on_chain)
    if isinstance(due, str):
        return due
    return _assign_many(ports, [due])[due.job_id]


def _due_assignment(ports: Ports, view, on_chain=None) -> DueAssignment | str:
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
    return DueAssignment(job.job_id, key, payee, job.escrow.price,
                         reassign=on_chain.state == EscrowState.ASSIGNED)


def _assign_many(ports: Ports, due: list[DueAssignment]) -> dict[str, str]:
    """One transaction for all (`assignBatch`), or one each if the batch is refused."""
    if not due:
        return {}
    chain = ports.chain
    if len(due) == 1:
        receipt = chain.escrow.send(chain.router, "assign", due[0].key, due[0].payee,
                                    due[0].price)
    else:
        try:
            receipt = chain.escrow.send(chain.router, "assignBatch", [d.key for d in due],
                                        [d.payee for d in due], [d.price for d in due])
        except ContractReverted:        # one item is no longer due: the rest go one by one
            return {d.job_id: _assign_many(ports, [d])[d.job_id] for d in due}
    outcomes = {}
    for d in due:
        event = "escrow.reassigned" if d.reassign else "escrow.assigned"
        data = {**receipt.as_event(), "worker": d.payee, "price": str(d.price),
                **({"batch": len(due)} if len(due) > 1 else {})}

        def record(j: Job, event=event, data=data, d=d):
            if any(e.data.get("tx_hash") == data["tx_hash"]
                   for e in ports.store.view(j.job_id).events):
                return None        # the chain follower saw the transaction first and noted it
            return noted(j, ports, event, {**data, "symbol": j.escrow.symbol},
                         escrow=j.escrow.model_copy(update={"payee": d.payee}))
        apply(ports, ports.store.get(d.job_id), record)
        outcomes[d.job_id] = "reassigned" if d.reassign else "assigned"
    return outcomes


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
        apply(ports, job, lambda j: noted(j, ports, "settlement.awaiting_signature", {
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


# -- release ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadyRelease:
    job_id: str
    key: bytes
    result: bytes
    signature: bytes
    hashes: list[str]
    worker: str


def _release(ports: Ports, view) -> str:
    ready = _ready_release(ports, view)
    if isinstance(ready, str):
        return ready
    return _release_many(ports, [ready])[ready.job_id]


def _ready_release(ports: Ports, view) -> ReadyRelease | str:
    """What a verified job's release needs, or what happened instead: nothing to do, the
    evidence missing (blocked), the payee's countersignature awaited, or a dispute window's
    finalize sent."""
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
            apply(ports, job, lambda j: noted(j, ports, "settlement.blocked", why))
        logger.error("release blocked", extra={"job_id": job.job_id, "why": why["message"]})
        return "blocked"
    key = job_key_bytes(job)
    record = chain.escrow.job(key)
    if record.state in (EscrowState.FUNDED, EscrowState.ASSIGNED):
        outcome = _assign_on_chain(ports, view, record)   # the payee and price, first
        if outcome in ("assigned", "reassigned"):
            record = chain.escrow.job(key)
    if record.state == EscrowState.ASSIGNED:
        attempt = next(a for a in view.attempts if a.number == job.attempt)
        if attempt.signature is None:
            return _ask_countersignature(ports, view, hashes)
        return ReadyRelease(job.job_id, key, result_hash(hashes),
                            bytes.fromhex(attempt.signature.removeprefix("0x")), hashes,
                            attempt.worker)
    if record.state == EscrowState.VERIFIED:
        try:
            receipt = chain.escrow.send(chain.verifier, "finalize", key)
        except ContractReverted as refused:
            if refused.error == "DisputeWindowOpen":
                return "dispute window open"
            raise
        released = next(e for e in receipt.events if e["event"] == "Released")
        return _settled(ports, job, {**receipt.as_event(), "outputs": hashes,
                                     "note": "dispute window passed", **charges(released)},
                        escrow=charged_terms(job.escrow, released))
    if record.state == EscrowState.RELEASED:
        funded = next((e.data["block"] for e in view.events if e.type == "escrow.funded"),
                      ports.settings.chain_start_block)
        tx = chain.escrow.released_tx(key, funded, ports.settings.chain_log_range)
        return _settled(ports, job, {"tx_hash": tx, "outputs": hashes,
                                     "note": "found released on chain"})
    return f"escrow is {record.state.name}; nothing to release"


def _release_many(ports: Ports, ready: list[ReadyRelease]) -> dict[str, str]:
    """One transaction for all (`releaseBatch`), or one each if the batch is refused; then
    each job's money on its timeline, with the transaction that moved it."""
    if not ready:
        return {}
    chain = ports.chain
    if len(ready) == 1:
        r = ready[0]
        receipt = chain.escrow.send(chain.verifier, "release", r.key, r.result, r.signature)
    else:
        try:
            receipt = chain.escrow.send(chain.verifier, "releaseBatch", [r.key for r in ready],
                                        [r.result for r in ready],
                                        [r.signature for r in ready])
        except ContractReverted:        # one item is refused: the rest go one by one
            return {r.job_id: _release_many(ports, [r])[r.job_id] for r in ready}
    outcomes = {}
    for r in ready:
        events = [e for e in receipt.events if e.get("jobId") == r.key]
        data = {**receipt.as_event(), "result_hash": "0x" + r.result.hex(), "outputs": r.hashes,
                "worker": r.worker, **({"batch": len(ready)} if len(ready) > 1 else {})}
        job = ports.store.get(r.job_id)
        verified = next((e for e in events if e["event"] == "Verified"), None)
        if verified:
            # A dispute window holds the payment on chain; the sweeper comes back when it ends.
            due = datetime.fromtimestamp(verified["releasableAt"], timezone.utc)
            apply(ports, job, lambda j, data=data, due=due: noted(
                j, ports, "settlement.scheduled", {**data, "releasable_at": due.isoformat()},
                next_deadline=due))
            outcomes[r.job_id] = "scheduled"
            continue
        released = next(e for e in events if e["event"] == "Released")
        outcomes[r.job_id] = _settled(ports, job, {**data, **charges(released)},
                                      escrow=charged_terms(job.escrow, released))
    return outcomes


def _settled(ports: Ports, job: Job, data: dict, **changes) -> str:
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
    apply(ports, job, lambda j: noted(j, ports, "settlement.refunded", data,
                                       escrow=j.escrow.model_copy(
                                           update={"refunded": j.escrow.amount, "charged": 0})))
    return "refunded"


def noted(job: Job, ports: Ports, event: str, data: dict, **changes):
    noted, e = states.note(job, event, at=ports.clock(), data=data)
    return noted.model_copy(update=changes), [e], []


def release_due(ports: Ports, job: Job) -> Job | None:
    """The sweeper's remedy for a verified escrow job whose release time came: ask the
    settlement handler again (it finalizes, or finds the job settled) and look back later."""
    now = ports.clock()

    def plan(j: Job):
        if j.state != State.VERIFIED or j.next_deadline is None or j.next_deadline > now:
            return None
        return noted(j, ports, "settlement.due", {}, next_deadline=now + DUE_AGAIN)
    moved = apply(ports, job, plan)
    if moved:
        ports.queues.send("settlement", {"action": "release", "job_id": job.job_id})
    return moved


ACTIONS = {"assign": _assign_on_chain, "release": _release, "refund": _refund}
PREPARE = {"assign": _due_assignment, "release": _ready_release}
SEND_MANY = {"assign": _assign_many, "release": _release_many}


def reconcile(ports: Ports, *, repair: bool = False) -> list[dict]:
    """Compare every escrow job whose money is not final with the chain (the open-escrow
    index: every one, not the newest few); with `repair`, re-send the settlement action for
    each drift that has a safe one. A job that ended unfunded and whose quote expired can
    never be funded: it leaves the index. Returns the drift rows, and measures how many
    (`SettlementDrift`)."""
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
    metrics.add("SettlementDrift", len(rows), "Count")
    return rows
