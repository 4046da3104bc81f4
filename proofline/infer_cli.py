"""`proofline infer`: embed a JSONL of texts or generate text from a prompt on the stack's
inference pool, wait until a trusted re-execution has checked the result, and fetch it with
its bytes checked against the sha256 the job lists."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import requests
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import common
from .client import TERMINAL, ApiError

EMBED, GENERATE = "embed_batch", "generate_small"
POLL_S = 0.5
DOWNLOAD_TIMEOUT_S = 60
# The API refuses manifests over 64 KiB; staying well under it leaves room for the other
# fields, and anything bigger goes up as a content-addressed JSONL object instead.
INLINE_LIMIT_BYTES = 48 * 1024
# The manifest's limit on one inline text; a JSONL object has none.
INLINE_TEXT_MAX_CHARS = 8192
_CHUNK = 1 << 20
# The events that say why an inference job failed, most specific first.
_CAUSES = ("validation.failed", "execution.failed", "execution.lost")
_ENDINGS = ("job.failed", "job.rejected", "job.cancelled")
_METRICS = {EMBED: ("queue_s", "cold_start_s", "warm", "model_s", "cost_usd", "batch_texts",
                    "batch_jobs", "runtime"),
            GENERATE: ("queue_s", "cold_start_s", "warm", "ttfb_s", "model_s", "cost_usd",
                       "runtime")}
_MEASURED = {EMBED: ("rows_reexecuted", "cosine_min", "cosine_min_required"),
             GENERATE: ("tokens", "max_tokens")}


class _Group(click.Group):
    """A refusal from the API exits 1 here, as a failed job does: exit 2 means the wait
    timed out while the job goes on."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            err = common.err
            err.print(f"[red]error[/red] {exc.status} [bold]{exc.reason}[/bold]: "
                      f"{escape(exc.message)}", soft_wrap=True)
            for detail in exc.details if isinstance(exc.details, list) else []:
                err.print(f"  - {detail.get('field', '')}: {detail.get('message', detail)}",
                          highlight=False)
            sys.exit(1)


@click.group(cls=_Group)
def infer():
    """Embeddings and text generation, each result re-executed before it counts."""


# -- quote ----------------------------------------------------------------------------------
@infer.command("quote")
@click.argument("kind", type=click.Choice([EMBED, GENERATE]))
@click.option("--texts", type=int, help="How many texts (embed_batch).")
@click.option("--max-tokens", type=int, help="Tokens to generate (generate_small).")
@click.option("--token", "symbol", default="ETH", show_default=True,
              help="The payment token an escrow job would be paid in.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def infer_quote(ctx, kind, texts, max_tokens, symbol, as_json):
    """What an escrow job of KIND would be charged on this stage, in a payment token."""
    answer = common.api_for(ctx).quote({
        "kind": kind, "payment_token": symbol,
        **({"texts": texts} if texts else {}), **({"max_tokens": max_tokens} if max_tokens else {})})
    common.emit(answer, as_json, lambda a: common.console.print(
        f"{a['kind']}: [bold]{a['price']} {a['symbol']}[/bold] (its max_price must be at "
        "least that)", highlight=False))


# -- embed ----------------------------------------------------------------------------------
def _waiting_options(command):
    """The options every `infer` command shares: idempotency, how long to wait, --json."""
    for option in reversed([
            click.option("--idempotency-key",
                         help="Reuse to make retries of this submission safe."),
            click.option("--timeout", default=600.0, show_default=True,
                         help="Seconds to wait for the verified result."),
            click.option("--json", "as_json", is_flag=True,
                         help="No progress display; one JSON object at the end.")]):
        command = option(command)
    return click.pass_context(command)


@infer.command("embed")
@click.option("--input", "source", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSONL: one JSON string or {"text": …} per line.')
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where the verified vectors.npy (float32, one row per text) is written.")
@click.option("--inline/--upload", "inline", default=None,
              help="Send the texts in the manifest, or upload the file (default: inline "
                   f"while the manifest stays under {INLINE_LIMIT_BYTES // 1024} KiB).")
@_waiting_options
def infer_embed(ctx, source, output, inline, idempotency_key, timeout, as_json):
    """Embed a JSONL file of texts into vectors.npy.

    One 384-dimension unit vector per text, a sample of them re-embedded on the trusted pool
    before the job settles."""
    texts = read_texts(source)
    manifest = {"kind": EMBED, "texts": texts}
    if inline is None:
        inline = (len(json.dumps(manifest)) <= INLINE_LIMIT_BYTES
                  and all(len(t) <= INLINE_TEXT_MAX_CHARS for t in texts))
    api = common.api_for(ctx)
    if inline:
        input_uri = None
        if not as_json:
            common.err.print(f"{len(texts)} texts from {escape(str(source))}, sent inline",
                          highlight=False, soft_wrap=True)
    else:
        slot = api.upload(source)
        input_uri = slot["input_uri"]
        manifest = {"kind": EMBED, "input_uri": input_uri, "input_hash": slot["input_hash"]}
        if not as_json:
            common.err.print(f"uploaded {escape(str(source))} ({len(texts)} texts) → {input_uri}"
                          if slot["upload_url"] else f"texts already stored at {input_uri}",
                          highlight=False, soft_wrap=True)
    job = _submit(api, manifest, idempotency_key, as_json)
    final = _await(api, job, timeout=timeout, show=not as_json)

    result = {"job_id": final["job_id"], "state": final["state"], "reason": final.get("reason"),
              "output": None, "count": None, "dim": None, "model": None,
              "input": "inline" if inline else "upload", "input_uri": input_uri,
              "metrics": {}, "verification": {}}
    events = api.events(final["job_id"])["events"]
    if final["state"] != "settled":
        _fail(final, events, result if as_json else None)

    vectors = _output(final, "vectors.npy")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")
    try:
        with open(partial, "wb") as out:
            _download(vectors, out.write)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    count, dim = _shape(output)
    if count != len(texts):
        raise click.ClickException(f"{output} holds {count} vectors for {len(texts)} texts")
    completed, passed = _evidence(events, final)
    result.update(output=str(output.resolve()), count=count, dim=dim,
                  model=completed.get("model"), metrics=_metrics(EMBED, completed),
                  verification=_verification(EMBED, passed))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_embed(result, output)


def read_texts(path: Path) -> list[str]:
    """The texts of a JSONL file, read as the inference pool reads it (blank lines skipped),
    so that a bad line is named here rather than failing the job on the stack."""
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise click.ClickException(f"{path} is not UTF-8 (byte {error.start})") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise click.ClickException(f"{path} line {number}: not JSON ({error})") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise click.ClickException(f'{path} line {number}: expected a JSON string or '
                                       f'{{"text": "…"}}, got {line.strip()[:60]}')
        # The API strips inline texts, so one of only spaces would be refused there.
        if not text.strip():
            raise click.ClickException(f"{path} line {number}: the text is empty")
        texts.append(text)
    if not texts:
        raise click.ClickException(f"{path} holds no texts")
    return texts


def _shape(path: Path) -> tuple[int, int]:
    try:
        vectors = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise click.ClickException(f"{path} is not a readable .npy: {error}") from None
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise click.ClickException(f"{path} holds {vectors.dtype} {vectors.shape}, "
                                   "not float32 rows")
    return int(vectors.shape[0]), int(vectors.shape[1])


def _print_embed(result: dict, output: Path) -> None:
    console = common.console
    console.print(f"[green]{result['state']}[/green] {escape(str(output))}", soft_wrap=True,
                  highlight=False)
    table = Table(show_header=False, box=None)
    table.add_row("[dim]job[/dim]", result["job_id"])
    table.add_row("[dim]vectors[/dim]", f"{result['count']} × {result['dim']} float32")
    table.add_row("[dim]model[/dim]", escape(result["model"] or "?"))
    _metric_rows(table, result["metrics"])
    check = result["verification"]
    if check.get("rows_reexecuted") is not None:
        table.add_row("[dim]verified[/dim]",
                      f"{check['rows_reexecuted']} of {result['count']} rows re-executed, "
                      f"min cosine {check['cosine_min']:.6f} "
                      f"(≥ {check.get('cosine_min_required')} needed)")
    console.print(table, highlight=False)


# -- generate -------------------------------------------------------------------------------
@infer.command("generate")
@click.option("--prompt", required=True)
@click.option("--max-tokens", default=64, show_default=True, type=int,
              help="At most this many new tokens (the job class allows 256).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Generation is greedy with this seed, so the same prompt and seed give "
                   "the same text, which is how the result is re-checked.")
@_waiting_options
def infer_generate(ctx, prompt, max_tokens, seed, idempotency_key, timeout, as_json):
    """Generate text from a prompt, deterministically.

    The text goes to stdout and everything else to stderr; the whole generation is run again
    on the trusted pool and must match before the job settles."""
    api = common.api_for(ctx)
    manifest = {"kind": GENERATE, "prompt": prompt, "max_tokens": max_tokens, "seed": seed}
    job = _submit(api, manifest, idempotency_key, as_json)
    final = _await(api, job, timeout=timeout, show=not as_json)

    result = {"job_id": final["job_id"], "state": final["state"], "reason": final.get("reason"),
              "text": None, "tokens": None, "model": None, "seed": seed, "metrics": {},
              "verification": {}}
    events = api.events(final["job_id"])["events"]
    if final["state"] != "settled":
        _fail(final, events, result if as_json else None)

    generation = _output(final, "generation.json")
    body = bytearray()
    _download(generation, body.extend)
    try:
        generated = json.loads(body.decode("utf-8"))
        text, tokens = generated["text"], generated["tokens"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise click.ClickException(f"generation.json is not what the class promises: "
                                   f"{error}") from None
    completed, passed = _evidence(events, final)
    result.update(text=text, tokens=tokens, model=generated.get("model"),
                  metrics=_metrics(GENERATE, completed),
                  verification=_verification(GENERATE, passed))
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    # click.echo, not rich: generated text may hold [brackets] that rich reads as markup.
    click.echo(text)
    _print_generate(result, max_tokens)


def _print_generate(result: dict, max_tokens: int) -> None:
    err = common.err
    table = Table(show_header=False, box=None)
    table.add_row("[dim]job[/dim]", f"{result['job_id']} [green]{result['state']}[/green]")
    table.add_row("[dim]model[/dim]", escape(result["model"] or "?"))
    table.add_row("[dim]tokens[/dim]", f"{result['tokens']} (max {max_tokens}), "
                                       f"seed {result['seed']}")
    _metric_rows(table, result["metrics"])
    matched = result["verification"].get("reexecution_matches")
    table.add_row("[dim]verified[/dim]", "re-executed: the same text and tokens" if matched
                  else "[red]re-execution did not match[/red]")
    err.print(table, highlight=False)


# -- shared ---------------------------------------------------------------------------------
class _StillRunning(Exception):
    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


def _submit(api, manifest: dict, idempotency_key: str | None, as_json: bool) -> dict:
    job, created = api.submit(manifest, idempotency_key=idempotency_key)
    if not as_json:
        common.err.print(f"{'created' if created else 'existing'} job "
                         f"[bold]{job['job_id']}[/bold] ({job['kind']}, {job['state']})")
    return job


def _await(api, job: dict, *, timeout: float, show: bool) -> dict:
    err = common.err
    try:
        return _follow(api, job, timeout=timeout, show=show)
    except _StillRunning as late:
        err.print(f"[red]timeout[/red] job {job['job_id']} is still {late.state} after "
                  f"{timeout:g}s; it goes on: `proofline jobs watch {job['job_id']}`",
                  soft_wrap=True)
        sys.exit(common.Exit.TIMED_OUT)
    except KeyboardInterrupt:
        err.print(f"stopped following; job {job['job_id']} goes on: "
                  f"`proofline jobs watch {job['job_id']}`", soft_wrap=True)
        sys.exit(common.Exit.INTERRUPTED)


def _follow(api, job: dict, *, timeout: float, show: bool) -> dict:
    deadline = time.monotonic() + timeout
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=common.err, disable=not show)
    with progress:
        task = progress.add_task(job["job_id"], total=None)
        while True:
            if job["state"] not in TERMINAL and time.monotonic() >= deadline:
                raise _StillRunning(job["state"])     # `--timeout 0`: as submitted, no wait
            job = api.job(job["job_id"])
            progress.update(task, description=f"{job['job_id']} {_phase(job)}")
            if job["state"] in TERMINAL:
                progress.update(task, total=1, completed=1)
                return job
            if time.monotonic() > deadline:
                raise _StillRunning(job["state"])
            time.sleep(POLL_S)


def _phase(job: dict) -> str:
    state = job["state"]
    again = f" (attempt {job['attempt']})" if job.get("attempt", 1) > 1 else ""
    return {"requested": "requested", "assigned": "queued for the model",
            "running": "running on the inference pool", "submitted": "result submitted",
            "verifying": "re-executing to verify", "retrying": "retrying"}.get(state,
                                                                              state) + again


def _output(job: dict, name: str) -> dict:
    found = next((o for o in job["outputs"] if o["name"] == name), None)
    if found is None:
        raise click.ClickException(f"job {job['job_id']} settled without {name}")
    return found


def _download(output: dict, write) -> None:
    """Stream an output into `write`, refusing bytes that do not hash to its listed sha256."""
    digest = hashlib.sha256()
    try:
        with requests.get(output["download_url"], stream=True,
                          timeout=DOWNLOAD_TIMEOUT_S) as response:
            response.raise_for_status()
            for chunk in response.iter_content(_CHUNK):
                digest.update(chunk)
                write(chunk)
    except requests.RequestException as error:
        raise click.ClickException(f"download of {output['name']} failed: {error}") from None
    actual = f"sha256:{digest.hexdigest()}"
    if actual != output["sha256"]:
        raise click.ClickException(f"{output['name']}: the downloaded bytes hash to {actual}, "
                                   f"but the verified job lists {output['sha256']}")


def _evidence(events: list[dict], job: dict) -> tuple[dict, dict]:
    """The execution report of the attempt that passed, and the verdict that passed it (a
    retried job has earlier attempts' reports on its timeline too)."""
    completed = next((e["data"] for e in reversed(events) if e["type"] == "execution.completed"
                      and e["data"].get("attempt") == job.get("attempt")), {})
    passed = next((e["data"] for e in reversed(events) if e["type"] == "validation.passed"), {})
    return completed, passed


def _metrics(kind: str, completed: dict) -> dict:
    return {k: completed[k] for k in _METRICS[kind] if k in completed}


def _verification(kind: str, passed: dict) -> dict:
    checks, measured = passed.get("checks") or {}, passed.get("measured") or {}
    return {"policy": passed.get("policy"), "passed": passed.get("passed", False),
            "reexecution_matches": checks.get("reexecution_matches", False), "checks": checks,
            **{k: measured[k] for k in _MEASURED[kind] if k in measured}}


def _metric_rows(table: Table, metrics: dict) -> None:
    if "queue_s" in metrics:
        table.add_row("[dim]queued[/dim]", f"{metrics['queue_s']:.3f} s")
    if metrics.get("warm"):
        table.add_row("[dim]start[/dim]", "warm (model already loaded)")
    elif metrics.get("cold_start_s") is not None:
        table.add_row("[dim]start[/dim]", f"cold: model loaded in {metrics['cold_start_s']:.3f} s")
    if metrics.get("ttfb_s") is not None:
        table.add_row("[dim]first token[/dim]", f"{metrics['ttfb_s']:.3f} s")
    if "model_s" in metrics:
        batch = metrics.get("batch_texts")
        shared = (f" (its share of a {batch}-text call for {metrics['batch_jobs']} jobs)"
                  if metrics.get("batch_jobs", 1) > 1 else "")
        table.add_row("[dim]model time[/dim]", f"{metrics['model_s']:.3f} s{shared}")
    if "cost_usd" in metrics:
        table.add_row("[dim]cost[/dim]", f"{metrics['cost_usd']} USD")


def _fail(job: dict, events: list[dict], result: dict | None) -> None:
    """Say why the job ended without a result (the summary too, under --json); exit 1."""
    err = common.err
    err.print(f"[red]{job['state']}[/red] job {job['job_id']}: "
              f"[bold]{job.get('reason') or 'no reason given'}[/bold]")
    cause = (next((e for e in reversed(events) if e["type"] in _CAUSES), None)
             or next((e for e in reversed(events) if e["type"] in _ENDINGS), None))
    if cause is not None:
        data = cause["data"]
        failed = [name for name, ok in (data.get("checks") or {}).items() if ok is False]
        parts = [data.get("message") or "",
                 f"failed checks: {', '.join(failed)}" if failed else ""]
        if any(parts):
            err.print(f"  {cause['type']}: " + "; ".join(p for p in parts if p),
                      highlight=False, markup=False, soft_wrap=True)
    if result is not None:
        click.echo(json.dumps(result, indent=2))
    sys.exit(1)
