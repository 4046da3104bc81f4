"""`proofline`: submit and follow jobs; every other command group is added here from its own
module."""
from __future__ import annotations

import json
import sys
import webbrowser
from pathlib import Path

import click
import yaml
from rich.table import Table

from chalicelib.settlement.money import from_base_units

from .common import (
    Cli,
    api_for,
    console,
    emit,
    err,
    fund_escrow,
    print_event,
    state_label,
    watch,
)
from .doctor import doctor
from .identity_cli import identity
from .infer_cli import infer
from .reproduce_cli import reproduce
from .settle_cli import settle
from .stack_cli import dev, ops
from .transcode_cli import transcode
from .workers_cli import worker, workers

MANIFEST_FLAGS = ("kind", "input_uri", "profile", "model", "max_attempts", "payment_policy",
                  "deadline", "max_price", "client_did", "job_id")


@click.group(cls=Cli)
@click.version_option(package_name="proofline", prog_name="proofline")
@click.option("--api", envvar="PROOFLINE_API_URL", help="API base URL (default: the local stack).")
@click.option("--sign/--no-sign", envvar="PROOFLINE_SIGN", default=False,
              help="Sign submit and cancel with your identity (EIP-712); required by "
                   "stages that refuse unsigned requests. The job's client is then your DID.")
@click.option("--keystore", type=click.Path(dir_okay=False, path_type=Path),
              help="Identity keystore for --sign (default: ~/.proofline/identity.json).")
@click.pass_context
def main(ctx, api, sign, keystore):
    """Proofline: verifiable compute jobs, paid only after verification."""
    ctx.obj = {"api": api, "sign": sign, "keystore": keystore}


# -- jobs ----------------------------------------------------------------------------------
@main.command()
@click.argument("manifest", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind")
@click.option("--input", "input_uri", help="s3:// URI, or a local file to upload first.")
@click.option("--profile")
@click.option("--model")
@click.option("--max-attempts", type=int)
@click.option("--payment-policy")
@click.option("--deadline", help="ISO 8601 with a timezone.")
@click.option("--max-price", help="Decimal, in the payment token's units (ETH by default).")
@click.option("--payment-token", help="An ERC-20 the stage accepts, by symbol (e.g. PUSD).")
@click.option("--client-did")
@click.option("--job-id")
@click.option("--idempotency-key", help="Reuse to make retries of this submission safe.")
@click.option("--fund/--no-fund", default=True, show_default=True,
              help="Fund the escrow on chain when the job's payment policy needs it.")
@click.option("--wait/--no-wait", default=False, help="Follow the job to a terminal state.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx, manifest, idempotency_key, fund, wait, as_json, **flags):
    """Submit a job from a manifest file (YAML or JSON) and/or flags."""
    fields = yaml.safe_load(manifest.read_text()) if manifest else {}
    if not isinstance(fields, dict):
        raise click.ClickException(f"{manifest} does not hold a mapping of manifest fields")
    fields.update({k: v for k, v in flags.items() if v is not None})
    api = api_for(ctx)
    source = fields.get("input_uri")
    if source and not str(source).startswith("s3://"):
        path = (manifest.parent if manifest else Path()) / source
        if not path.is_file():
            raise click.ClickException(f"input {source!r} is neither s3:// nor a local file")
        slot = api.upload(path)
        fields.update(input_uri=slot["input_uri"], input_hash=slot["input_hash"])
        if not as_json:
            err.print(f"uploaded {path} → {slot['input_uri']}" if slot["upload_url"]
                      else f"input already stored at {slot['input_uri']}")
    job, created = api.submit(fields, idempotency_key=idempotency_key)
    if not as_json:
        console.print(f"{'created' if created else 'existing'} job [bold]{job['job_id']}[/bold] "
                      f"({job['kind']}, {job['state']})")
    if fund and job.get("escrow") and job["state"] == "requested":
        receipt = fund_escrow(job, fields.get("max_price"))
        if not as_json:
            terms = job["escrow"]
            err.print(f"funded escrow {terms['job_key'][:18]}… with "
                      f"{from_base_units(terms['amount'], terms['decimals'])} {terms['symbol']} "
                      f"in tx {receipt.tx_hash} (block {receipt.block}, gas {receipt.gas_used})")
    if wait:
        final = watch(api, job["job_id"], as_json)
        sys.exit(0 if final["state"] == "settled" else 1)
    if as_json:
        click.echo(json.dumps({**job, "created": created}, indent=2))


@main.group()
def jobs():
    """List, inspect, follow and cancel jobs."""


@jobs.command("list")
@click.option("--state")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_list(ctx, state, limit, as_json):
    def render(rows):
        table = Table("job", "kind", "state", "attempt", "source", "created", "reason")
        for j in rows:
            table.add_row(j["job_id"], j["kind"], state_label(j["state"]), str(j["attempt"]),
                          j["source"], j["created_at"][:19], j.get("reason") or "")
        console.print(table)
    emit(api_for(ctx).jobs(state, limit), as_json, render)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_show(ctx, job_id, as_json):
    def render(job):
        table = Table(show_header=False, box=None)
        for key in ("job_id", "kind", "state", "reason", "attempt", "max_attempts", "worker",
                    "payment_policy", "correlation_id", "created_at", "updated_at"):
            table.add_row(f"[dim]{key}[/dim]", state_label(str(job.get(key))) if key == "state"
                          else str(job.get(key) if job.get(key) is not None else "—"))
        manifest = job["manifest"]
        source = manifest.get("input_uri") or (f"{len(manifest['texts'])} inline texts"
                                               if manifest.get("texts") else "inline prompt")
        table.add_row("[dim]input[/dim]", f"{source}\n{manifest.get('input_hash') or ''}")
        for out in job["outputs"]:
            table.add_row("[dim]output[/dim]", f"{out['uri']}\n{out['sha256']} ({out['size_bytes']} B)")
        for a in job.get("attempts", []):
            table.add_row(f"[dim]attempt {a['number']}[/dim]",
                          f"{a['state']} on {a['worker']}" + (f" ({a['reason']})" if a.get("reason") else ""))
        if job.get("progress"):
            done = job["progress"]
            table.add_row("[dim]tasks[/dim]", f"{done['passed']}/{done['total']} passed, "
                          f"{done['failed']} failed")
        if job.get("metrics"):
            table.add_row("[dim]metrics[/dim]", " ".join(f"{k}={v}" for k, v in job["metrics"].items()))
        verification = job.get("verification")
        if verification:
            caught = ", ".join(f"{k} faked: p={v}" for k, v in
                               verification["caught_if_faked"].items())
            table.add_row("[dim]verified[/dim]",
                          f"{verification['audited']} of {verification['population']} "
                          f"{verification['unit']} audited; {verification['statement']}\n"
                          f"[dim]{caught}[/dim]")
        stats = job.get("class_stats") or {}
        if stats.get("validation_failure_rate") is not None or stats.get("retry_rate") is not None:
            table.add_row(f"[dim]{job['kind']}[/dim]",
                          f"validation failure rate {stats.get('validation_failure_rate')}, "
                          f"retry rate {stats.get('retry_rate')}")
        console.print(table)
    emit(api_for(ctx).job(job_id), as_json, render)


@jobs.command("explain")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_explain(ctx, job_id, as_json):
    """Why each attempt (and each routed segment task) went to the worker it went to, and
    why the others did not."""
    routed = ("job.assigned", "segment.offered", "segment.routed")
    rankings = [{"attempt": e["data"].get("attempt"), "task": e.get("task"),
                 **e["data"]["ranking"]}
                for e in api_for(ctx).events(job_id)["events"]
                if e["type"] in routed and "ranking" in e["data"]]

    def render(rows):
        if not rows:
            console.print(f"job {job_id} has not been assigned yet")
        for row in rows:
            what = f"task {row['task']} attempt" if row["task"] else "attempt"
            console.print(f"[bold]{what} {row['attempt']}[/bold]: {row['reason']}")
            table = Table("worker", "score", "price", "factors")
            for ranked in row["ranked"]:
                table.add_row(ranked["worker"], f"{ranked['score']:.3f}", ranked["price"],
                              " ".join(f"{k}={v}" for k, v in ranked["factors"].items()))
            console.print(table)
            for why, seen in row["excluded"].items():
                console.print(f"  not considered, {why}: {seen['count']} "
                              f"(e.g. {', '.join(seen['first'])})")
    emit(rankings, as_json, render)


@jobs.command("events")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_events(ctx, job_id, as_json):
    timeline = api_for(ctx).events(job_id)
    if as_json:
        click.echo(json.dumps(timeline, indent=2))
        return
    for event in timeline["events"]:
        print_event(event)


@jobs.command("watch")
@click.argument("job_id")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.pass_context
def jobs_watch(ctx, job_id, timeout, as_json):
    """Follow a job's timeline live until it ends; exit 0 only if it settled."""
    final = watch(api_for(ctx), job_id, as_json, timeout)
    sys.exit(0 if final["state"] == "settled" else 1)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_cancel(ctx, job_id, as_json):
    emit(api_for(ctx).cancel(job_id), as_json,
          lambda job: console.print(f"job {job['job_id']} is {state_label(job['state'])}"))


@main.command()
@click.argument("job_id")
@click.option("--open/--no-open", "open_browser", default=True, show_default=True,
              help="Open the link in this machine's browser; --no-open only prints it.")
@click.pass_context
def ui(ctx, job_id, open_browser):
    """Open JOB's page in a browser: its timeline, charge, verdicts and a player for a
    transcode. The link signs the browser in as you; it works once, within two minutes."""
    link = api_for(ctx).page_link(job_id)
    click.echo(link["url"])
    if open_browser and not webbrowser.open(link["url"]):
        err.print("no browser to open here: open the link above within two minutes")


jobs.add_command(reproduce)
main.add_command(transcode)
main.add_command(infer)
main.add_command(identity)
main.add_command(settle)
main.add_command(workers)
main.add_command(worker)
main.add_command(dev)
main.add_command(ops)
main.add_command(doctor)


if __name__ == "__main__":
    main()
