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

from chalicelib import config, ports
from chalicelib.aws.deploy import enable_partial_batch_responses

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


