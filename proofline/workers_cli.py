"""`proofline workers`: the worker registry as the API shows it."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import click
from rich.table import Table

from . import common
from . import identity as ids
from .client import ApiError
from .identity_cli import _passphrase, _run
from .worker_agent import Agent


@click.group()
def workers():
    """Registered workers: claims, verified capabilities, health, reputation."""


@workers.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers_list(ctx, as_json):
    def render(rows):
        table = Table("did", "region", "claims", "routable for", "heartbeat", "reputation")
        for w in rows:
            reputation = ", ".join(f"{k} {v.get('score', '—')}" for k, v in w["reputation"].items())
            table.add_row(w["did"], w["claims"]["region"], ", ".join(w["claims"]["job_classes"]),
                          ", ".join(w["routable_for"]) or "none (claims only)",
                          "fresh" if w["heartbeat_fresh"] else "stale", reputation or "—")
        common.console.print(table)
    common.emit(common.api_for(ctx, operator=True).workers(), as_json, render)


@workers.command("show")
@click.argument("did")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers_show(ctx, did, as_json):
    def render(w):
        table = Table(show_header=False, box=None)
        table.add_row("[dim]did[/dim]", w["did"])
        table.add_row("[dim]claims[/dim]", json.dumps(w["claims"], indent=1))
        for name, verified in w["verified"].items():
            table.add_row(f"[dim]verified {name}[/dim]",
                          f"{verified['how']} at {verified['verified_at']}, "
                          f"until {verified['expires_at']}")
        for name, challenge in w.get("challenges", {}).items():
            table.add_row(f"[dim]challenge {name}[/dim]",
                          f"{challenge['state']} {challenge.get('job_id') or ''} "
                          f"{challenge.get('reason') or ''}".strip())
        table.add_row("[dim]routable for[/dim]", ", ".join(w["routable_for"]) or "none")
        table.add_row("[dim]health[/dim]", json.dumps(w["health"]) if w["health"] else "—")
        table.add_row("[dim]last heartbeat[/dim]", str(w["last_heartbeat"] or "never"))
        table.add_row("[dim]reputation[/dim]", json.dumps(w["reputation"]) or "—")
        common.console.print(table)
    common.emit(common.api_for(ctx, operator=True).worker(did), as_json, render)


@click.group()
def worker():
    """Run a marketplace worker on this machine."""


@worker.command("run")
@click.option("--classes", required=True,
              help="Job classes to offer, comma separated (e.g. ffmpeg_hls).")
@click.option("--price", "prices", multiple=True, required=True, metavar="CLASS=PRICE",
              help="Price per unit of work for a class (ffmpeg_hls: per megapixel-second "
                   "of output), e.g. ffmpeg_hls=0.00003. Repeat per class.")
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--keystore", type=click.Path(dir_okay=False, path_type=Path),
              help="Identity keystore (default: ~/.proofline/identity.json).")
@click.option("--max-jobs", type=click.IntRange(min=1),
              help="Leave after submitting this many results.")
@click.option("--heartbeat-every", type=click.FloatRange(min=0.2), default=20.0,
              show_default=True, help="Seconds between heartbeats (keeps leases alive).")
@click.option("--poll-every", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between lease requests while nothing is offered.")
@click.pass_context
def worker_run(ctx, classes, prices, region, keystore, max_jobs, heartbeat_every, poll_every):
    """Register, pass the challenge jobs, then lease, encode and submit signed results until
    stopped (SIGTERM/Ctrl-C finish the task in hand first) or --max-jobs is reached."""
    opened = _run(lambda: ids.load_identity(keystore, _passphrase(confirm=False)))
    price_per_unit = {}
    for item in prices:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{item!r} is not CLASS=PRICE", param_hint="--price")
        price_per_unit[name.strip()] = value.strip()
    import av
    claims = {"job_classes": [c.strip() for c in classes.split(",") if c.strip()],
              "runtimes": {"ffmpeg": "imageio-ffmpeg", "pyav": av.__version__},
              "codecs": ["h264", "aac"], "region": region, "price_per_unit": price_per_unit,
              "hardware": {"cpu_cores": os.cpu_count() or 1}}
    console = common.console
    agent = Agent(api=common.api_for(ctx), account=opened.account, did=opened.did, claims=claims,
                  heartbeat_every_s=heartbeat_every, poll_s=poll_every, max_jobs=max_jobs,
                  log=lambda line: console.print(f"[dim]{_now()}[/dim] {line}"))
    agent.install_signal_handlers()
    try:
        stats = agent.run()
    except ApiError as error:
        raise click.ClickException(f"{error.reason}: {error}") from None
    console.print(f"leased {stats.leased}, submitted {stats.submitted}, "
                  f"released {stats.released}, errors {stats.errors}")


def _now() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")
