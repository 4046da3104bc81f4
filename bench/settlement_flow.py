"""Escrow settlement through the control plane's own flow on the local stack: 24 media_probe
jobs paid in the stablecoin, funded by the client at once, assigned and released by the
control plane (which batches what arrives within its window). Measures the gas of every
control-plane transaction (assign and release; funding and withdrawals are the client's and
the worker's), per job, and the time from `validation.passed` to the release receipt."""
from __future__ import annotations

import statistics
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from eth_account import Account
from web3 import Web3

from chalicelib.identity.signing import did_for
from chalicelib.models import EscrowTerms
from chalicelib.settlement.chain import Escrow, artifact
from chalicelib.settlement.escrow import quote_of
from proofline import clips
from proofline.client import TERMINAL, Api
from proofline.devstack import TEST_TOKEN, DevStack

from . import local_stack

JOBS = 24
CONTROL_PLANE_EVENTS = ("escrow.assigned", "escrow.reassigned", "settlement.released",
                        "settlement.refunded")


def run() -> dict[str, float]:
    # Schedules at a deployed stage's cadence: the chain follower once a minute.
    with local_stack(visibility_cap=5, schedule_every_s=60, pool_workers=2) as (stack, tmp):
        return _measure(stack, tmp)


def _measure(stack: DevStack, tmp: Path) -> dict[str, float]:
    client = Account.from_key(stack.info.dev_keys["client"])
    api = Api(stack.info.api_url, signer=(client, did_for(client.address, stack.info.chain_id)))
    w3 = Web3(Web3.HTTPProvider(stack.info.rpc_url))
    escrow = Escrow(w3, stack.info.escrow_address)
    source = api.upload(clips.make_clip(tmp / "tiny.mp4", seconds=0.5, width=64, height=48))
    jobs = [api.submit({"kind": "media_probe", "input_uri": source["input_uri"],
                        "payment_policy": "escrow_before_start", "payment_token": TEST_TOKEN,
                        "max_price": "0.01"}, idempotency_key=str(uuid.uuid4()))[0]
            for _ in range(JOBS)]
    # A busy client approves the escrow once for the lot, then funds each job.
    token = w3.eth.contract(address=jobs[0]["escrow"]["token"],
                            abi=artifact("TestToken")["abi"])
    total = sum(job["escrow"]["amount"] for job in jobs)
    escrow._transact(client, token.functions.approve(escrow.address, total), "approve")
    for job in jobs:
        terms = EscrowTerms.model_validate(job["escrow"])
        escrow.fund(client, quote_of(terms), bytes.fromhex(terms.quote_signature[2:]))
    finals = [_wait(api, job["job_id"]) for job in jobs]
    settled = [f for f in finals if f["state"] == "settled"]
    timelines = [api.events(f["job_id"])["events"] for f in settled]
    txs = {e["data"]["tx_hash"]: e["type"] for events in timelines for e in events
           if e["type"] in CONTROL_PLANE_EVENTS and e["data"].get("tx_hash")}
    gas = sum(w3.eth.get_transaction_receipt(tx)["gasUsed"] for tx in txs)
    releases = [tx for tx, kind in txs.items() if kind == "settlement.released"]
    assigns = [tx for tx, kind in txs.items() if kind.startswith("escrow.")]
    latency = sorted(_seconds(events, "validation.passed", "settlement.released")
                     for events in timelines)
    charged = {f["payment"]["charged"] for f in settled}
    return {"settlement_jobs_settled": len(settled),
            "gas_per_job_control_plane": round(gas / max(1, len(settled))),
            "control_plane_transactions": len(txs),
            "jobs_per_assign_transaction": round(len(settled) / max(1, len(assigns)), 2),
            "jobs_per_release_transaction": round(len(settled) / max(1, len(releases)), 2),
            "release_latency_p50_s": round(statistics.median(latency), 3),
            "release_latency_p95_s": round(latency[int(0.95 * (len(latency) - 1))], 3),
            "charged_per_job_pusd_units": _units(charged)}


def _wait(api: Api, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.job(job_id)
        if job["state"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def _seconds(events: list[dict], start: str, end: str) -> float:
    at = {e["type"]: datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in events}
    return (at[end] - at[start]).total_seconds()


def _units(charged: set[str]) -> int:
    """The one charge every job got, in PUSD base units (-1 if they differ)."""
    return int(Decimal(charged.pop()) * 10**6) if len(charged) == 1 else -1
