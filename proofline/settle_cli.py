"""`proofline settle`: escrow reconciliation, disputes and their resolution."""
from __future__ import annotations

import sys

import click
from rich.table import Table

from . import common


@click.group()
def settle():
    """Escrow settlement."""


@settle.command("reconcile")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def settle_reconcile(ctx, as_json):
    """Compare every escrow job with the chain; exit 1 when anything drifted."""
    rows = common.api_for(ctx, operator=True).settlement_drift()

    def render(drift):
        if not drift:
            common.console.print("[green]no drift[/green]: every escrow job matches the chain")
            return
        table = Table("job", "job state", "chain state", "drift", "repair")
        for row in drift:
            table.add_row(row["job_id"], row["job_state"], row["chain_state"], row["kind"],
                          row["repair"] or "manual")
        common.console.print(table)
    common.emit(rows, as_json, render)
    sys.exit(1 if rows else 0)


@settle.command("dispute")
@click.argument("job_id")
@click.pass_context
def settle_dispute(ctx, job_id):
    """Contest a verified result while its dispute window is open (client key)."""
    job = common.api_for(ctx).job(job_id)
    if not job.get("escrow"):
        raise click.ClickException(f"job {job_id} has no escrow")
    w3, client = common.chain_signer("PROOFLINE_CLIENT_KEY", "client")
    _, contract = common.stage_escrow()
    receipt = common.escrow_call(lambda escrow: escrow.send(
        client, "openDispute", bytes.fromhex(job["escrow"]["job_key"][2:])), w3, contract)
    common.console.print(f"dispute opened on {job_id} in tx {receipt.tx_hash}; the payment waits "
                  "for the arbiter")


@settle.command("resolve")
@click.argument("job_id")
@click.option("--worker-share-bps", type=click.IntRange(0, 10_000), required=True,
              help="Basis points of the escrow paid to the worker; the client gets the rest.")
@click.pass_context
def settle_resolve(ctx, job_id, worker_share_bps):
    """Settle a disputed job on chain (arbiter key)."""
    job = common.api_for(ctx).job(job_id)
    if not job.get("escrow"):
        raise click.ClickException(f"job {job_id} has no escrow")
    w3, arbiter = common.chain_signer("PROOFLINE_ARBITER_KEY", "arbiter")
    _, contract = common.stage_escrow()
    receipt = common.escrow_call(lambda escrow: escrow.send(
        arbiter, "resolveDispute", bytes.fromhex(job["escrow"]["job_key"][2:]),
        worker_share_bps), w3, contract)
    common.console.print(f"dispute on {job_id} resolved ({worker_share_bps / 100:g}% to the worker) "
                  f"in tx {receipt.tx_hash}")
