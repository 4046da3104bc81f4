"""What every `proofline` command group shares: the consoles, the API client for this
invocation (signed when asked), JSON-or-table output, funding an escrow from the client's
key, and following a job's timeline. Command modules import this, never `cli`."""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from enum import IntEnum
from pathlib import Path

import click
import requests
from eth_account import Account
from pydantic import ValidationError
from rich.console import Console
from web3 import Web3

from chalicelib.config import secret
from chalicelib.errors import ProoflineError
from chalicelib.identity.signing import did_for
from chalicelib.models import EscrowTerms
from chalicelib.settlement import rules as settlement
from chalicelib.settlement.chain import NATIVE, Escrow, Receipt, artifact
from chalicelib.settlement.escrow import funding_signer, quote_of
from chalicelib.settlement.money import from_base_units, to_base_units

from . import client as api_client
from . import identity as ids
from .devstack import read_state
from .identity_cli import _passphrase, _run


class Exit(IntEnum):
    """Every command's exit status (docs/cli.md)."""
    OK = 0
    FAILED = 1          # it ran and did not succeed: a job not settled, a check failed
    USAGE = 2           # the command line is wrong (click's own usage errors)
    UNAVAILABLE = 3     # nothing to talk to: no local stack, the API or chain unreachable
    REFUSED = 4         # the API refused the request (4xx), with its reason code
    TIMED_OUT = 5       # still running when --timeout ran out; the job goes on
    INTERRUPTED = 130   # Ctrl-C while following; the job goes on


STATE_DIR = Path(".proofline")      # the local stack's address and log, in the working directory
console = Console()
err = Console(stderr=True)


def api_for(ctx: click.Context, *, operator: bool = False,
            url: str | None = None) -> api_client.Api:
    """The API client of this invocation (at `url`, else `--api`, else the local stack),
    signing (writes) and signing in (reads) as the identity in the keystore with `--sign`;
    without it, on the local stack as the stack's development client (or its operator, for
    `operator` commands), elsewhere as the key in `PROOFLINE_CLIENT_KEY`
    (`PROOFLINE_OPERATOR_KEY`)."""
    try:
        url = url or api_client.resolve_api_url(ctx.obj["api"], STATE_DIR)
    except api_client.NoStack as exc:
        err.print(f"[red]error[/red] {exc}", soft_wrap=True)
        sys.exit(Exit.UNAVAILABLE)
    if ctx.obj.get("sign"):
        opened = _run(lambda: ids.load_identity(ctx.obj.get("keystore"),
                                                _passphrase(confirm=False)))
        identity = (opened.account, opened.did)
    else:
        role = "operator" if operator else "client"
        identity = dev_identity(url, role) or key_identity(url, role)
    return api_client.Api(url, signer=identity)


def key_identity(url: str, role: str):
    """(account, DID) of the key in `PROOFLINE_<ROLE>_KEY` (or its `_KEYSTORE`), on the
    stage's chain; None when it is not set."""
    try:
        account = Account.from_key(secret(f"PROOFLINE_{role.upper()}_KEY"))
    except KeyError:
        return None
    chain_id = api_client.Api(url).health()["sign_in"]["chain_id"] or ids.DEFAULT_CHAIN_ID
    return account, did_for(account.address, chain_id)


def dev_identity(url: str, role: str):
    """(account, DID) of the local stack's development `role` key, when `url` is that
    stack; None elsewhere (a deployed stage needs `--sign`)."""
    info = read_state(STATE_DIR)
    key = (info.dev_keys or {}).get(role) if info and info.api_url == url.rstrip("/") else None
    if not key:
        return None
    account = Account.from_key(key)
    return account, did_for(account.address, info.chain_id)


def emit(data, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


class Cli(click.Group):
    """Turn API errors into one readable line and the exit status of their kind."""
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except api_client.ApiError as exc:
            err.print(f"[red]error[/red] {exc.status} [bold]{exc.reason}[/bold]: {exc.message}")
            for detail in exc.details if isinstance(exc.details, list) else []:
                err.print(f"  - {detail.get('field', '')}: {detail.get('message', detail)}")
            sys.exit(Exit.REFUSED if exc.status < 500 else Exit.UNAVAILABLE)
        except requests.ConnectionError as exc:
            err.print(f"[red]unavailable[/red] {exc.request.url if exc.request else ''}: "
                      "nothing answers there", soft_wrap=True)
            sys.exit(Exit.UNAVAILABLE)


def fund_escrow(job: dict, max_price) -> Receipt:
    """Fund a job's escrow with the client's key (ETH, or approve-then-fund for an ERC-20),
    after checking the terms the API answered against what this machine knows: the stage's
    configured chain and escrow contract, a quote signed by a key holding that contract's
    router role, this client as the funder, and an amount within `max_price`."""
    w3, client = chain_signer("PROOFLINE_CLIENT_KEY", "client")
    chain_id, contract = stage_escrow()
    try:
        terms = EscrowTerms.model_validate(job["escrow"])
    except ValidationError as exc:
        raise click.ClickException(f"the job's escrow terms are malformed: {exc}") from None
    escrow = Escrow(w3, contract)
    decimals = 18 if terms.token == NATIVE else token_decimals(w3, terms.token)
    ceiling = to_base_units(str(max_price), decimals) if max_price is not None else None
    problems = settlement.quote_problems(terms, chain_id=chain_id, rpc_chain_id=w3.eth.chain_id,
                                         contract=contract, client=client.address,
                                         ceiling=ceiling)
    quote = quote_of(terms)
    if not problems:
        signer = funding_signer(escrow.result_domain(), quote,
                                bytes.fromhex(terms.quote_signature.removeprefix("0x")))
        if not escrow.has_role("ROUTER_ROLE", signer):
            problems.append(f"the quote is signed by {signer}, not by this escrow's router")
    if problems:
        raise click.ClickException("refusing to fund: " + "; ".join(problems))
    err.print(f"funding {from_base_units(terms.amount, decimals)} {terms.symbol} (max price "
              f"{max_price}) into escrow {contract} on chain {chain_id}", highlight=False)
    return escrow_call(lambda e: e.fund(client, quote, bytes.fromhex(
        terms.quote_signature.removeprefix("0x"))), w3, contract)


def stage_escrow() -> tuple[int, str]:
    """(chain id, escrow contract) this machine trusts: `PROOFLINE_CHAIN_ID` and
    `PROOFLINE_ESCROW_ADDRESS`, else the local stack's."""
    chain_id, contract = os.environ.get("PROOFLINE_CHAIN_ID"), os.environ.get(
        "PROOFLINE_ESCROW_ADDRESS")
    if chain_id and contract:
        return int(chain_id), contract
    info = read_state(STATE_DIR)
    if info and info.escrow_address:
        return info.chain_id, info.escrow_address
    raise click.ClickException("set PROOFLINE_CHAIN_ID and PROOFLINE_ESCROW_ADDRESS (the stage's "
                               "escrow) to fund: the CLI never pays a contract the API names")


def token_decimals(w3: Web3, token: str) -> int:
    return w3.eth.contract(address=Web3.to_checksum_address(token),
                           abi=artifact("TestToken")["abi"]).functions.decimals().call()


def chain_signer(key_env: str, dev_key: str):
    """(web3, account) for a command that signs on chain: the key from `key_env` (or the
    keystore `<key_env>_KEYSTORE`), else on the local stack its development account."""
    info = read_state(STATE_DIR)
    try:
        key = secret(key_env)
    except KeyError:
        key = (info.dev_keys or {}).get(dev_key) if info else None
    rpc = os.environ.get("PROOFLINE_RPC_URL") or (info.rpc_url if info else None)
    if not key or not rpc:
        raise click.ClickException(f"this needs {key_env} (or {key_env}_KEYSTORE) and "
                                   "PROOFLINE_RPC_URL, or a local stack")
    return Web3(Web3.HTTPProvider(rpc)), Account.from_key(key)


def escrow_call(call, w3, contract: str):
    try:
        return call(Escrow(w3, contract))
    except ProoflineError as error:
        raise click.ClickException(f"{error.reason}: {error}") from error


def watch(api: api_client.Api, job_id: str, as_json: bool, timeout: float = 600) -> dict:
    for event in api.follow(job_id, timeout_s=timeout):
        if as_json:
            click.echo(json.dumps(event))
        else:
            print_event(event)
    job = api.job(job_id)
    if not as_json:
        for out in job["outputs"]:
            console.print(f"[green]output[/green] {out['name']}: {out['uri']}")
        if job.get("reason"):
            console.print(f"[red]reason[/red] {job['reason']}")
    return job


def print_event(event: dict) -> None:
    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).strftime("%H:%M:%S")
    console.print(f"{at} [bold]{event['type']:<22}[/bold] {state_label(event['state']):<10} "
                  f"[dim]{summarize(event['data'])}[/dim]", highlight=False)


def summarize(data: dict) -> str:
    keys = ("attempt", "worker", "reason", "message", "passed", "source", "name", "duration_ms")
    parts = [f"{k}={data[k]}" for k in keys if data.get(k) not in (None, "")]
    return " ".join(parts)[:160]


def state_label(state: str) -> str:
    color = {"settled": "green", "failed": "red", "rejected": "red", "cancelled": "yellow"}
    return f"[{color[state]}]{state}[/{color[state]}]" if state in color else state
