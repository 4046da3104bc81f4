"""`proofline transcode`: price a source locally, or transcode it on the stack and download
the verified package with every file checked against its listed sha256."""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import click
import requests
from rich.filesize import decimal as human_bytes
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from chalicelib import catalog
from chalicelib.errors import ExecutionError, InputError, UnknownProfile
from chalicelib.media import profiles
from chalicelib.settlement.money import from_base_units

from . import common
from .client import TERMINAL

KIND = "ffmpeg_hls"
POLL_S = 0.5
UPLOADS = 4                      # uploads in flight at once (the source and its segments)
SPLIT_TIMEOUT_S = 1800
DOWNLOAD_THREADS = 8
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
# The events that say why a transcode failed, most specific first.
_CAUSES = ("segment.rejected", "segment.failed", "validation.failed", "execution.failed")
_ENDINGS = ("job.failed", "job.rejected", "job.cancelled")


@click.group()
def transcode():
    """Transcode a video into an HLS ladder (or one MP4), verified segment by segment."""


# -- submit ---------------------------------------------------------------------------------
@transcode.command("submit")
@click.option("--input", "source", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The local video to transcode (uploaded content-addressed).")
@click.option("--profile", help="A transcode profile (default: the job class's, hls-abr).")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder the verified package is downloaded into.")
@click.option("--max-attempts", type=int)
@click.option("--payment-policy")
@click.option("--max-price", help="Decimal, in the payment token's units (ETH by default).")
@click.option("--payment-token", help="An ERC-20 the stage accepts, by symbol (e.g. PUSD).")
@click.option("--idempotency-key", help="Reuse to make retries of this submission safe.")
@click.option("--fund/--no-fund", default=True, show_default=True,
              help="Fund the escrow on chain when the job's payment policy needs it.")
@click.option("--timeout", default=1800.0, show_default=True,
              help="Seconds to wait for the verified package.")
@click.option("--json", "as_json", is_flag=True,
              help="No progress display; one JSON object at the end.")
@click.option("--split/--no-split", default=True, show_default=True,
              help="Cut the video into the profile's segments here while the source uploads, "
                   "so the stack starts encoding without fetching and cutting it.")
@click.pass_context
def transcode_submit(ctx, source, profile, output, idempotency_key, fund, timeout, as_json,
                     split, **flags):
    """Upload a video, transcode it, follow every rendition, and download the package."""
    api = common.api_for(ctx)
    with tempfile.TemporaryDirectory(prefix="proofline-split-") as tmp:
        slot, segments = upload_source(api, source, profile, Path(tmp) if split else None,
                                       say=None if as_json else common.err.print)
    if not as_json:
        common.err.print(f"uploaded {source} → {slot['input_uri']}" if slot["upload_url"]
                      else f"input already stored at {slot['input_uri']}", highlight=False,
                      soft_wrap=True)
    manifest = {"kind": KIND, "input_uri": slot["input_uri"], "input_hash": slot["input_hash"],
                **({"segments": segments} if segments else {}),
                **({"profile": profile} if profile else {}),
                **{k: v for k, v in flags.items() if v is not None}}
    job, created = api.submit(manifest, idempotency_key=idempotency_key)
    if not as_json:
        common.err.print(f"{'created' if created else 'existing'} job [bold]{job['job_id']}[/bold] "
                      f"({job.get('profile') or KIND}, {job['state']})")
    if fund and job.get("escrow") and job["state"] == "requested":
        receipt = common.fund_escrow(job, flags.get("max_price"))
        if not as_json:
            terms = job["escrow"]
            common.err.print(f"funded escrow {terms['job_key'][:18]}… with "
                          f"{from_base_units(terms['amount'], terms['decimals'])} "
                          f"{terms['symbol']} in tx {receipt.tx_hash}")

    try:
        final = _follow(api, job, timeout=timeout, show=not as_json)
    except _StillRunning as late:
        common.err.print(f"[red]timeout[/red] job {job['job_id']} is still {late.state} after "
                      f"{timeout:g}s; it goes on: `proofline jobs watch {job['job_id']}`",
                      soft_wrap=True)
        sys.exit(common.Exit.TIMED_OUT)
    except KeyboardInterrupt:
        common.err.print(f"stopped following; job {job['job_id']} goes on: "
                      f"`proofline jobs watch {job['job_id']}`", soft_wrap=True)
        sys.exit(common.Exit.INTERRUPTED)

    plan = final.get("plan") or {}
    result = {"job_id": final["job_id"], "state": final["state"], "reason": final.get("reason"),
              "output_dir": str(output.resolve()), "entry": None, "files": 0, "bytes": 0,
              "renditions": [r["name"] for r in plan.get("renditions", [])],
              "segments": len(plan.get("segments", [])), "duration_s": plan.get("duration_s")}
    if final["state"] in TERMINAL and final["state"] != "settled":
        _explain_failure(api, final)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        sys.exit(1)

    package = api.package(final["job_id"])
    count, size = _download(package["files"], output, show=not as_json)
    result.update(entry=str((output / package["entry"]).resolve()), files=count, bytes=size)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_summary(final, output / package["entry"], count, size)


class _StillRunning(Exception):
    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


def _follow(api, job: dict, *, timeout: float, show: bool) -> dict:
    """Poll the job until it ends, or until its package is paid for while an escrow job's
    dispute window keeps it from settling (the outputs are handed out from then on)."""
    deadline = time.monotonic() + timeout
    with _Board(show) as board:
        while True:
            if job["state"] not in TERMINAL and time.monotonic() >= deadline:
                raise _StillRunning(job["state"])     # `--timeout 0`: as submitted, no wait
            job = api.job(job["job_id"])
            board.update(job)
            handed_out = any(o.get("download_url") for o in job["outputs"])
            if job["state"] in TERMINAL or (job["state"] in ("verified", "disputed")
                                            and handed_out):
                return job
            if time.monotonic() > deadline:
                raise _StillRunning(job["state"])
            time.sleep(POLL_S)


class _Board:
    """A status line (a spinner until the plan exists), then one bar per rendition and one
    for the audio track, counting verified segments."""

    def __init__(self, show: bool):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<20}"),
                                 BarColumn(), TextColumn("{task.fields[count]:>7}"),
                                 TimeElapsedColumn(), console=common.err, disable=not show)
        self.status = self.progress.add_task("planning", total=None, count="")
        self.bars: dict[str, int] = {}

    def __enter__(self) -> _Board:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, job: dict) -> None:
        progress, plan = job.get("progress"), job.get("plan") or {}
        self.progress.update(self.status, description=self._phase(job, progress))
        if job["state"] in TERMINAL or job["state"] == "verified":
            self.progress.update(self.status, total=1, completed=1)
        if not progress:
            return
        sizes = {r["name"]: f"{r['width']}x{r['height']}" for r in plan.get("renditions", [])}
        order = [*sizes, *sorted(set(progress["by_rendition"]) - set(sizes))]
        for name in order:
            counts = progress["by_rendition"].get(name)
            if counts is None:
                continue
            if name not in self.bars:
                label = f"{name} {sizes[name]}" if name in sizes else name
                self.bars[name] = self.progress.add_task(label, total=counts["total"], count="")
            self.progress.update(self.bars[name], total=counts["total"],
                                 completed=counts["passed"],
                                 count=f"{counts['passed']}/{counts['total']}")

    @staticmethod
    def _phase(job: dict, progress: dict | None) -> str:
        state = job["state"]
        if state == "requested":
            return "waiting for funding" if job.get("escrow") else "requested"
        if state in TERMINAL or state in ("verified", "disputed"):
            return state
        if not progress:
            return "planning"
        if progress["passed"] < progress["total"]:
            return "encoding"
        return "assembling" if state == "running" else "verifying package"


def _download(files: list[dict], target: Path, *, show: bool) -> tuple[int, int]:
    """Fetch every listed file under `target`, refusing any whose bytes do not hash to the
    sha256 the verified listing names. Returns (files, bytes)."""
    root = target.resolve()
    root.mkdir(parents=True, exist_ok=True)
    total = sum(f["size_bytes"] for f in files)
    local = threading.local()

    def fetch(entry: dict) -> None:
        path = (root / entry["path"]).resolve()
        # The listing comes over the network: a path must not climb out of the folder.
        if not path.is_relative_to(root) or path == root:
            raise click.ClickException(f"package path {entry['path']!r} leaves {target}")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        digest = hashlib.sha256()
        if not hasattr(local, "http"):       # a Session per thread: they are not shared safely
            local.http = requests.Session()
        http = local.http
        try:
            with http.get(entry["download_url"], stream=True,
                          timeout=DOWNLOAD_TIMEOUT_S) as response:
                response.raise_for_status()
                with open(partial, "wb") as out:
                    for chunk in response.iter_content(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        progress.advance(bar, len(chunk))
        except requests.RequestException as error:
            partial.unlink(missing_ok=True)
            raise click.ClickException(f"download of {entry['path']} failed: {error}") from None
        actual = f"sha256:{digest.hexdigest()}"
        if actual != entry["sha256"]:
            partial.unlink(missing_ok=True)
            raise click.ClickException(f"{entry['path']}: the downloaded bytes hash to {actual}, "
                                       f"but the verified package lists {entry['sha256']}")
        partial.replace(path)

    progress = Progress(TextColumn("download"), BarColumn(), DownloadColumn(),
                        console=common.err, disable=not show)
    with progress, ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        bar = progress.add_task("download", total=total)
        futures = [pool.submit(fetch, f) for f in files]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return len(files), total


def _explain_failure(api, job: dict) -> None:
    err = common.err
    err.print(f"[red]{job['state']}[/red] job {job['job_id']}: "
              f"[bold]{job.get('reason') or 'no reason given'}[/bold]")
    events = api.events(job["job_id"])["events"]
    cause = (next((e for e in reversed(events) if e["type"] in _CAUSES), None)
             or next((e for e in reversed(events) if e["type"] in _ENDINGS), None))
    if cause is None:
        return
    data = cause["data"]
    why = data.get("last") or data.get("reason") or ""
    why = "" if why == job.get("reason") else why
    failed = [name for name, ok in (data.get("checks") or {}).items() if ok is False]
    parts = [why, data.get("message") or "",
             f"failed checks: {', '.join(failed)}" if failed else ""]
    where = f" {cause['task']}" if cause.get("task") else ""
    err.print(f"  {cause['type']}{where}: " + "; ".join(p for p in parts if p), highlight=False)


def _print_summary(job: dict, entry: Path, count: int, size: int) -> None:
    console = common.console
    plan = job.get("plan") or {}
    # soft_wrap: the path stays on one line however narrow the terminal, for copy and grep.
    console.print(f"[green]{job['state']}[/green] {entry}", soft_wrap=True, highlight=False)
    table = Table(show_header=False, box=None)
    renditions = ", ".join(f"{r['name']} ({r['width']}x{r['height']})"
                           for r in plan.get("renditions", []))
    table.add_row("[dim]job[/dim]", job["job_id"])
    table.add_row("[dim]renditions[/dim]",
                  renditions + (" + audio" if plan.get("has_audio") else ""))
    table.add_row("[dim]segments[/dim]",
                  f"{len(plan.get('segments', []))} of up to {plan.get('segment_s', 0):g} s")
    table.add_row("[dim]duration[/dim]", f"{plan.get('duration_s', 0):.2f} s")
    table.add_row("[dim]files[/dim]", f"{count}, {human_bytes(size)} ({size} B)")
    console.print(table)


def upload_source(api, source: Path, profile: str | None, workdir: Path | None, *,
                  say=None) -> tuple[dict, list[dict] | None]:
    """Upload the source and, when `workdir` is given, cut it into the profile's segments
    meanwhile (by stream copy, as the planner would) and upload those too: the slot and the
    segments' listing for the manifest. A source that needs a re-encode before it can be cut
    (rotated, variable frame rate, another codec…), or cannot be read here, is left to the
    planner."""
    from media_worker.segments import inspect_source, plan_split, split_source

    with ThreadPoolExecutor(UPLOADS) as uploads:
        whole = uploads.submit(api.upload, source)
        if workdir is None:
            return whole.result(), None
        try:
            chosen = profiles.get_profile(
                profile or catalog.default().job_class(KIND).defaults.profile)
            plan = plan_split(inspect_source(source), chosen.segment_s)
            if plan.method != "copy":
                # A re-encode first: CPU the stack has, and x264 makes other bytes each time,
                # so a retried submission would not be the same manifest.
                raise ValueError(f"it needs a re-encode first ({', '.join(plan.reasons)})")
            pieces = split_source(source, workdir, plan, timeout_s=SPLIT_TIMEOUT_S)
        except (InputError, ExecutionError, UnknownProfile, ValueError) as error:
            if say:
                say(f"not cut here ({getattr(error, 'reason', error)}): the stack will cut it")
            return whole.result(), None
        slots = [uploads.submit(api.upload, piece.path) for piece in pieces]
        listing = [{"input_uri": slot.result()["input_uri"],
                    "input_hash": slot.result()["input_hash"], "start_s": piece.start_s,
                    "duration_s": piece.duration_s} for piece, slot in zip(pieces, slots)]
        if say:
            say(f"cut into {len(pieces)} segments here while the source uploaded")
        return whole.result(), listing


# -- quote ----------------------------------------------------------------------------------
@transcode.command("quote")
@click.option("--input", "source", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", help="A transcode profile (default: the job class's, hls-abr).")
@click.option("--token", "symbol", help="Ask the stage what an escrow job in this payment "
              "token (ETH, PUSD, …) would be charged; without it, the USD reference rates.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def transcode_quote(ctx, source, profile, symbol, as_json):
    """Price a transcode of a local file before submitting it: in USD offline, or in a
    payment token by the stage's own rates (`--token`)."""
    from media_worker.segments import inspect_source

    name = profile or catalog.default().job_class(KIND).defaults.profile
    try:
        chosen = profiles.get_profile(name)
    except UnknownProfile as error:
        known = ", ".join(error.details["known"])
        raise click.ClickException(f"{error.reason}: {error.message} (known: {known})") from None
    try:
        info = inspect_source(source)
        priced = profiles.quote(chosen, duration_s=info.duration_s, source_width=info.width,
                                source_height=info.height, rotation=info.rotation,
                                source_bytes=source.stat().st_size)
    except InputError as error:
        raise click.ClickException(f"{error.reason}: {error.message}") from None

    data = {**priced.model_dump(mode="json"),
            "audio_bitrate_k": chosen.audio.bitrate_k,
            "source": {"path": str(source), "width": info.width, "height": info.height,
                       "rotation": info.rotation, "fps": info.fps,
                       "duration_s": info.duration_s, "bytes": source.stat().st_size,
                       "has_audio": info.has_audio}}
    if symbol:
        data["charge"] = common.api_for(ctx).quote({
            "kind": KIND, "profile": chosen.name, "payment_token": symbol,
            "source": {"duration_s": info.duration_s, "width": info.width,
                       "height": info.height, "rotation": info.rotation,
                       "size_bytes": source.stat().st_size}})
    common.emit(data, as_json, lambda _: _print_quote(priced, info, chosen, data.get("charge")))


def _print_quote(priced, info, profile, charge=None) -> None:
    console = common.console
    console.print(f"{profile.name}: {info.width}x{info.height}"
                  f"{f' rotated {info.rotation}°' if info.rotation else ''}, "
                  f"{info.fps:g} fps, {info.duration_s:.2f} s", highlight=False)
    rungs = Table("rendition", "size", "video kbit/s", "max kbit/s", "h264")
    for r in priced.renditions:
        rungs.add_row(r.name, f"{r.width}x{r.height}", str(r.video_bitrate_k), str(r.maxrate_k),
                      f"{r.h264_profile} {r.h264_level}")
    # profiles.quote prices the audio track whether or not the source has sound.
    rungs.add_row("audio", "", str(profile.audio.bitrate_k), "", profile.audio.codec)
    console.print(rungs)
    cost = Table("item", priced.currency)
    # Exact decimal strings: the quote is money, never rounded through a float.
    for item in ("compute", "storage", "transfer"):
        cost.add_row(item, format(getattr(priced, item), "f"))
    cost.add_row("[bold]total[/bold]", f"[bold]{format(priced.total, 'f')}[/bold]")
    console.print(cost)
    console.print(f"estimated output {human_bytes(priced.estimated_output_bytes)}",
                  highlight=False)
    if charge:
        console.print(f"an escrow job here is charged [bold]{charge['price']} {charge['symbol']}"
                      f"[/bold]; its max_price must be at least that", highlight=False)
