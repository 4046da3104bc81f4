"""`proofline dev` (the embedded local stack on 127.0.0.1) and `proofline ops` (deployment
chores)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import boto3
import click
from eth_account import Account
from web3 import Web3

from chalicelib import config, ports
from chalicelib.aws.deploy import enable_partial_batch_responses
from chalicelib.settlement.chain import connect, deploy_escrow

from . import client as api_client
from . import common
from .clips import seed_challenges
from .devstack import read_state

STATE_DIR = common.STATE_DIR


# -- local stack ---------------------------------------------------------------------------
@click.group()
def dev():
    """Run the embedded local stack (moto, API, event pump) on 127.0.0.1."""


@dev.command("up")
@click.option("--json", "as_json", is_flag=True)
@click.option("--workers", default=2, show_default=True, help="Media worker processes.")
@click.option("--timeout", default=90.0, show_default=True)
def dev_up(as_json, workers, timeout):
    """Start the stack in the background and return once it is healthy."""
    info = _running()
    if info is None:
        STATE_DIR.mkdir(exist_ok=True)
        log = open(STATE_DIR / "stack.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "proofline.devstack", "--state-dir", str(STATE_DIR),
             "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        info = _await_healthy(process, timeout)
        started = True
    else:
        started = False
    common.emit({**info.__dict__, "started": started}, as_json, lambda d: common.console.print(
        f"{'started' if started else 'already running'}: API {d['api_url']}  "
        f"AWS {d['aws_endpoint']}  (pid {d['pid']}, logs {STATE_DIR / 'stack.log'})"))


@dev.command("status")
@click.option("--json", "as_json", is_flag=True)
def dev_status(as_json):
    info = _running()
    data = {"running": info is not None, **(info.__dict__ if info else {})}
    common.emit(data, as_json, lambda d: common.console.print(
        f"running: API {d['api_url']}  AWS {d['aws_endpoint']}  pid {d['pid']}" if d["running"]
        else "not running"))
    sys.exit(common.Exit.OK if info else common.Exit.UNAVAILABLE)


@dev.command("down")
def dev_down():
    info = read_state(STATE_DIR)
    if info is None or not _alive(info.pid):
        (STATE_DIR / "stack.json").unlink(missing_ok=True)
        common.console.print("not running")
        return
    os.kill(info.pid, signal.SIGTERM)
    for _ in range(100):
        if not _alive(info.pid):
            break
        time.sleep(0.2)
    else:
        os.kill(info.pid, signal.SIGKILL)
    (STATE_DIR / "stack.json").unlink(missing_ok=True)
    common.console.print(f"stopped (pid {info.pid})")


def _running():
    info = read_state(STATE_DIR)
    if info is None or not _alive(info.pid):
        return None
    try:
        api_client.Api(info.api_url, timeout=5).health()
    except Exception:
        return None
    return info


def _await_healthy(process: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (STATE_DIR / "stack.log").read_text(errors="replace")[-3000:]
            raise click.ClickException(f"the stack exited with {process.returncode}:\n{tail}")
        info = _running()
        if info is not None:
            return info
        time.sleep(0.3)
    process.terminate()
    raise click.ClickException(f"the stack was not healthy after {timeout}s; see {STATE_DIR / 'stack.log'}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


# -- operations ----------------------------------------------------------------------------
@click.group()
def ops():
    """Deployment chores."""


@ops.command("seed-challenges")
def ops_seed_challenges():
    """Upload the clips that challenge jobs transcode into the stage's artifacts bucket
    (workers claiming a class without one stay unverified for it)."""
    with tempfile.TemporaryDirectory() as workdir:
        written = seed_challenges(ports.default().blobs, config.settings().artifacts_bucket,
                                  workdir)
    common.console.print("\n".join(written) or "every challenge clip is in place")


@ops.command("enable-batch-failures")
@click.argument("functions", nargs=-1, required=True)
@click.option("--region")
def ops_enable_batch_failures(functions, region):
    """Turn on ReportBatchItemFailures for the SQS triggers Chalice deployed (it can't)."""
    rows = enable_partial_batch_responses(boto3.client("lambda", region_name=region), functions)
    for row in rows:
        common.console.print(f"{row['function']} ← {row['queue_arn']}: "
                      f"{'enabled' if row['changed'] else 'already on'}")




@ops.command("deploy-escrow")
@click.option("--rpc-url", envvar="CHAIN_RPC_URL", required=True,
              help="The chain's JSON-RPC endpoint (or CHAIN_RPC_URL).")
@click.option("--treasury", required=True, help="Where the escrow's fees go.")
@click.option("--router", required=True, help="The router key's address (ROUTER_ROLE).")
@click.option("--verifier", required=True, help="The verifier key's address (VERIFIER_ROLE).")
@click.option("--refunder", required=True, help="The refunder key's address (OPERATOR_ROLE).")
@click.option("--arbiter", required=True, help="A person's address (ARBITER_ROLE).")
@click.option("--token", "tokens", multiple=True, help="An ERC-20 accepted in payment (repeat).")
@click.option("--dispute-window", type=click.IntRange(0, 2**24 - 1),
              help="Seconds a client may contest a verified result (default: the contract's).")
@click.option("--arbitration-window", type=click.IntRange(0, 2**32 - 1),
              help="Seconds an arbiter has to decide a dispute (default: the contract's).")
@click.option("--json", "as_json", is_flag=True)
def ops_deploy_escrow(rpc_url, treasury, router, verifier, refunder, arbiter, tokens,
                      dispute_window, arbitration_window, as_json):
    """Deploy a stage's escrow with PROOFLINE_ADMIN_KEY (or its _KEYSTORE, _SECRET): each
    role granted to its own key, the payment tokens allowed; prints what the stage's
    configuration needs (CHAIN_ID, ESCROW_ADDRESS, CHAIN_START_BLOCK)."""
    holders = {"ROUTER_ROLE": router, "VERIFIER_ROLE": verifier, "OPERATOR_ROLE": refunder,
               "ARBITER_ROLE": arbiter}
    named = [("--treasury", treasury), *(("--token", t) for t in tokens),
             *zip(("--router", "--verifier", "--refunder", "--arbiter"), holders.values())]
    for hint, address in named:
        if not Web3.is_address(address):
            raise click.BadParameter(f"{address!r} is not an address", param_hint=hint)
    if len({a.lower() for a in holders.values()}) < len(holders):
        raise click.BadParameter("each role needs its own key, so a leaked key does one thing",
                                 param_hint="--router/--verifier/--refunder/--arbiter")
    try:
        admin = Account.from_key(config.secret("PROOFLINE_ADMIN_KEY"))
    except KeyError as exc:
        raise click.UsageError(str(exc)) from None
    if admin.address.lower() in {a.lower() for a in holders.values()}:
        raise click.BadParameter("the admin key must hold no other role", param_hint="admin")
    w3 = connect(rpc_url)
    windows = None
    if dispute_window is not None or arbitration_window is not None:
        if dispute_window is None or arbitration_window is None:
            raise click.UsageError("--dispute-window and --arbitration-window go together")
        windows = (dispute_window, arbitration_window)
    escrow, block = deploy_escrow(w3, admin, treasury=treasury, holders=holders,
                                  tokens=tuple(tokens), windows=windows)
    deployed = {"CHAIN_ID": str(w3.eth.chain_id), "ESCROW_ADDRESS": escrow.address,
                "CHAIN_START_BLOCK": str(block), "admin": admin.address}
    common.emit(deployed, as_json, lambda d: common.console.print(
        f"escrow {d['ESCROW_ADDRESS']} on chain {d['CHAIN_ID']} (block {d['CHAIN_START_BLOCK']},"
        f" admin {d['admin']})\nin the stage's .chalice/config.json: CHAIN_ID, ESCROW_ADDRESS, "
        f"CHAIN_START_BLOCK as above; in sam deploy: ChainId={d['CHAIN_ID']} "
        f"EscrowAddress={d['ESCROW_ADDRESS']}", highlight=False, soft_wrap=True))
