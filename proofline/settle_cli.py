"""`proofline settle`: escrow reconciliation, disputes and their resolution, and collecting
what the escrow owes (pay, change, dispute shares)."""
from __future__ import annotations

import json
import os
import sys

import click
from rich.table import Table

from chalicelib.settlement.chain import NATIVE, Escrow
from chalicelib.settlement.money import from_base_units

from . import common
from .devstack import TEST_TOKEN, read_state


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


def _tokens() -> dict[str, str]:
    """Symbol → address of the tokens this machine knows: ETH, the stage's
    `PROOFLINE_PAYMENT_TOKENS` ({"PUSD": "0x…"}), or the local stack's stablecoin."""
    tokens = {"ETH": NATIVE}
    configured = os.environ.get("PROOFLINE_PAYMENT_TOKENS")
    if configured:
        tokens.update(json.loads(configured))
    else:
        info = read_state(common.STATE_DIR)
        if info and info.token_address:
            tokens[TEST_TOKEN] = info.token_address
    return tokens


ROLE_KEYS = {"client": "PROOFLINE_CLIENT_KEY", "pool": "PROOFLINE_POOL_KEY",
             "worker": "PROOFLINE_WORKER_KEY"}


@settle.command("balance")
@click.option("--as", "role", type=click.Choice(sorted(ROLE_KEYS)), default="client",
              show_default=True, help="Whose credits: the key in PROOFLINE_<ROLE>_KEY.")
@click.option("--json", "as_json", is_flag=True)
def settle_balance(role, as_json):
    """What the escrow owes this key, per token: pay for verified work, change from jobs that
    cost less than their max price, dispute shares."""
    w3, account = common.chain_signer(ROLE_KEYS[role], role)
    _, contract = common.stage_escrow()
    escrow = Escrow(w3, contract)
    rows = {}
    for symbol, token in _tokens().items():
        decimals = 18 if token == NATIVE else common.token_decimals(w3, token)
        rows[symbol] = str(from_base_units(escrow.credit(token, account.address), decimals))

    def render(balances):
        table = Table("token", "withdrawable", title=f"escrow credits of {account.address}")
        for symbol, amount in balances.items():
            table.add_row(symbol, amount)
        common.console.print(table)
    common.emit(rows, as_json, render)


@settle.command("withdraw")
@click.option("--token", "symbol", default="ETH", show_default=True)
@click.option("--as", "role", type=click.Choice(sorted(ROLE_KEYS)), default="client",
              show_default=True, help="Whose credits: the key in PROOFLINE_<ROLE>_KEY.")
def settle_withdraw(symbol, role):
    """Collect everything the escrow owes this key in one token, in one transaction."""
    token = _tokens().get(symbol)
    if token is None:
        raise click.ClickException(f"unknown token {symbol!r}; known: {sorted(_tokens())}")
    w3, account = common.chain_signer(ROLE_KEYS[role], role)
    _, contract = common.stage_escrow()
    receipt = common.escrow_call(lambda escrow: escrow.send(account, "withdraw", token), w3,
                                 contract)
    common.console.print(f"withdrew {symbol} credits of {account.address} in tx "
                         f"{receipt.tx_hash}")
