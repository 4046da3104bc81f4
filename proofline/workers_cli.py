"""`proofline workers`: the worker registry as the API shows it."""
from __future__ import annotations

import json

import click
from rich.table import Table


def _cli():
    # Late: proofline.cli registers this group at its bottom (see transcode_cli).
    from . import cli
    return cli


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
        _cli().console.print(table)
    _cli()._emit(_cli()._api(ctx).workers(), as_json, render)


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
        table.add_row("[dim]routable for[/dim]", ", ".join(w["routable_for"]) or "none")
        table.add_row("[dim]health[/dim]", json.dumps(w["health"]) if w["health"] else "—")
        table.add_row("[dim]last heartbeat[/dim]", str(w["last_heartbeat"] or "never"))
        table.add_row("[dim]reputation[/dim]", json.dumps(w["reputation"]) or "—")
        _cli().console.print(table)
    _cli()._emit(_cli()._api(ctx).worker(did), as_json, render)
