"""`proofline jobs reproduce`: re-run one source segment of a settled transcode on this
machine, with the code and argument lists its worker ran (`encode_renditions`), and compare
what comes out with what was delivered.

x264 with more than one thread is not bit-exact from run to run, so two honest encodes of
the same segment differ in their bytes. Identical bytes settle it at once; otherwise both
files are measured with the verifier's own video check against the source segment, side by
side, and they agree when both pass it and the delivered file is byte for byte what the
package lists and the segment's check verified.
"""
from __future__ import annotations

import hashlib
import secrets
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import click
import requests
from rich.markup import escape
from rich.table import Table

from chalicelib import catalog
from chalicelib.errors import ProoflineError
from chalicelib.media import ffmpeg_args, profiles
from chalicelib.media.probe import sha256_file
from chalicelib.models import Task, TranscodePlan
from chalicelib.verification import audit
from media_worker import verify
from media_worker.ffmpeg import ffmpeg_version
from media_worker.transcode import encode_renditions

from .common import Exit, api_for, console, emit, err

DELIVERED = ("verified", "settled", "disputed")   # states whose package may be handed out
AGREED = ("identical", "agree")
# Measures shown side by side: (label, measured key); the checks follow, each by its name.
MEASURES = (("sha256", "sha256"), ("frames", "frame_count"), ("frames expected", "frames_expected"),
            ("duration s", "duration_s"), ("start pts s", "start_pts_s"),
            ("keyframe interval s", "keyframe_interval_s"), ("bitrate kbps", "bitrate_kbps"),
            ("bitrate target kbps", "bitrate_target_kbps"),
            ("fingerprint distance max", "frame_distance_max"),
            ("frames off source", "frames_off_count"), ("SSIM min", "ssim_min"),
            ("detail min", "detail_min"), ("SSIM frames", "ssim_frames"))


@click.command("reproduce")
@click.argument("job_id")
@click.option("--segment", "index", type=int, default=0, show_default=True,
              help="The source segment to encode again.")
@click.option("--rendition", "names", multiple=True,
              help="One of its renditions (repeatable; default: every one, in one run as "
                   "the worker ran them).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reproduce(ctx, job_id, index, names, as_json):
    """Re-run a segment of a settled transcode here and compare it with what was delivered:
    exit 0 when they agree, 1 when they do not."""
    api = api_for(ctx)
    job = api.job(job_id)
    plan = _plan(job)
    piece, renditions = _chosen(plan, index, names)
    listed = {f["path"]: f for f in api.package(job_id)["files"]}
    records = _records(api.events(job_id)["events"])
    link = next((s for s in api.inputs(job_id)["segments"] if s["index"] == index), None)
    if link is None or link["url"] is None:
        raise click.ClickException(f"the stage gives no link to segment {index}'s source")
    tasks = [Task(job_id=job_id, task_id=f"{r['name']}-{index:05d}", kind="video",
                  rendition=r["name"], index=index, start_s=piece["start_s"],
                  duration_s=piece["duration_s"], input_uri=piece["uri"],
                  input_hash=piece["sha256"], max_attempts=1,
                  updated_at=datetime.now(timezone.utc)) for r in renditions]
    ssim_frames = catalog.default().job_class(job["kind"]).verification.ssim_frames
    with tempfile.TemporaryDirectory(prefix="proofline-reproduce-") as tmp:
        work = Path(tmp)
        source = work / ("input" + Path(piece["uri"]).suffix)     # named as the worker names it
        got = _fetch(link["url"], source)
        if got != piece["sha256"]:
            raise click.ClickException(f"segment {index}'s source hashes to {got}; the plan "
                                       f"records {piece['sha256']}")
        if not as_json:
            err.print(f"encoding segment {index} ({', '.join(r['name'] for r in renditions)}) "
                      "here, as the worker did…")
        try:
            made = encode_renditions(plan, tasks, source, work / "local")
        except ProoflineError as error:
            raise click.ClickException(f"{error.reason}: {error}") from None
        reference = verify.Reference.of(source, piece["duration_s"])
        rows = [_compare(job_id, plan, piece, task, made[task.task_id],
                         listed.get(f"{task.rendition}/seg_{index:05d}.ts"),
                         records.get(task.task_id, {}), work, source, reference, ssim_frames)
                for task in tasks]
    report = {"job_id": job_id, "segment": index, "agree": all(r["verdict"] in AGREED
                                                                for r in rows),
              "ffmpeg": {"here": ffmpeg_version(),
                         "recorded": sorted({r["recorded"].get("ffmpeg") or "unknown"
                                             for r in rows})},
              "template": _template(plan),
              "command": _command(plan, renditions, piece, work), "renditions": rows}
    emit(report, as_json, _render)
    sys.exit(Exit.OK if report["agree"] else Exit.FAILED)


def _plan(job: dict) -> TranscodePlan:
    """The job's plan, or a refusal saying why there is nothing to reproduce."""
    def refuse(why: str):
        err.print(f"[red]refused[/red] job {job['job_id']} {why}", soft_wrap=True)
        sys.exit(Exit.REFUSED)
    if not job.get("plan"):
        refuse(f"is a {job['kind']} job with no transcode plan: only a transcode's segments "
               "can be encoded again")
    if job["state"] not in DELIVERED:
        refuse(f"is {job['state']}: only a settled transcode's delivered files can be "
               "compared")
    plan = TranscodePlan.model_validate(job["plan"])
    if plan.container != "hls":
        refuse(f"was packaged as one {plan.container} file: its segments are not delivered "
               "one by one to compare")
    return plan


def _chosen(plan: TranscodePlan, index: int, names: tuple[str, ...]) -> tuple[dict, list[dict]]:
    pieces = {s["index"]: s for s in plan.segments}
    if index not in pieces:
        raise click.UsageError(f"job has no segment {index}: its segments are 0 to "
                               f"{len(pieces) - 1}")
    known = [r["name"] for r in plan.renditions]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.UsageError(f"no rendition {', '.join(unknown)} in this job: it has "
                               f"{', '.join(known)}")
    return pieces[index], [r for r in plan.renditions if not names or r["name"] in names]


def _records(events: list[dict]) -> dict[str, dict]:
    """Each task's passing attempt as the timeline recorded it: the hash its check verified,
    and how its worker ran it (FFmpeg build, renditions in the run)."""
    verified = {e["task"]: e["data"] for e in events
                if e["type"] == "segment.verified" and e.get("task")}
    found = {}
    for event in events:
        passed = verified.get(event.get("task") or "")
        if (event["type"] == "segment.submitted" and passed is not None
                and event["data"].get("attempt") == passed.get("attempt")):
            found[event["task"]] = {"attempt": passed.get("attempt"),
                                    "worker": passed.get("worker"),
                                    "verified_sha256": passed.get("measured", {}).get("sha256"),
                                    "ffmpeg": event["data"].get("ffmpeg"),
                                    "renditions_in_run": event["data"].get("renditions_in_run")}
    return found


def _compare(job_id: str, plan: TranscodePlan, piece: dict, task: Task,
             made: tuple[list[Path], dict], entry: dict | None, record: dict, work: Path,
             source: Path, reference: verify.Reference, ssim_frames: int) -> dict:
    """One rendition: the delivered file and the local one, judged alike."""
    [local], execution = made
    here = sha256_file(local)
    row = {"rendition": task.rendition, "task": task.task_id, "recorded": record,
           "renditions_in_run": execution["renditions_in_run"]}
    if entry is None:
        return {**row, "verdict": "disagree", "failing": ["delivered_in_package"],
                "delivered": None, "local": {"sha256": here}}
    delivered = work / "delivered" / entry["path"]
    got = _fetch(entry["download_url"], delivered)
    # The recorded hashes the delivered file must match: the listing's and its check's.
    records_agree = record.get("verified_sha256") == entry["sha256"]
    if got == here == entry["sha256"] and records_agree:
        side = {"sha256": got, "size_bytes": delivered.stat().st_size}
        return {**row, "verdict": "identical", "failing": [], "delivered": side,
                "local": side}
    # The stage's audit secret is not the client's: a fresh one draws frames no one foresaw,
    # and one key for both files compares them at the same frames.
    key = audit.audit_key(secrets.token_bytes(32), subject=f"{job_id}~{task.task_id}",
                          committed=[entry["sha256"]])
    planned = profiles.PlannedRendition.model_validate(
        next(r for r in plan.renditions if r["name"] == task.rendition))

    def judge(path: Path, reported: str, actual: str):
        return verify.judge_video(
            path, reported_sha256=reported, actual_sha256=actual, planned=planned,
            fps=Fraction(plan.fps), segment_s=plan.segment_s, start_s=piece["start_s"],
            source_duration_s=piece["duration_s"], source=source, reference=reference,
            key=key, ssim_frames=ssim_frames)
    theirs, ours = judge(delivered, entry["sha256"], got), judge(local, here, here)
    checks = {**theirs.checks, "listed_as_verified": records_agree}
    # What the delivered file fails and the local one passes (or has no part in) tells them
    # apart; what both fail says nothing about the delivered file.
    failing = [name for name, ok in checks.items() if not ok and ours.checks.get(name, True)]
    verdict = ("disagree" if failing else "inconclusive" if not ours.passed else "agree")
    return {**row, "verdict": verdict, "failing": failing,
            "delivered": {"path": entry["path"], "listed_sha256": entry["sha256"],
                          "size_bytes": delivered.stat().st_size, "passed": theirs.passed,
                          "checks": checks, "measured": theirs.measured},
            "local": {"size_bytes": local.stat().st_size, "passed": ours.passed,
                      "checks": ours.checks, "measured": ours.measured}}


def _fetch(url: str, target: Path) -> str:
    """Stream `url` to `target`; the sha256 of what arrived."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            with open(target, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except requests.HTTPError as error:
        raise click.ClickException(f"download of {target.name} failed: {error}") from None
    return f"sha256:{digest.hexdigest()}"


def _template(plan: TranscodePlan) -> dict:
    """Whether this code's argument lists are those the job's stored template pins."""
    here = ffmpeg_args.command_template(
        profiles.get_profile(plan.profile),
        [profiles.PlannedRendition.model_validate(r) for r in plan.renditions],
        fps=Fraction(plan.fps))
    return {"stored": plan.command_template.get("version"), "here": here["version"],
            "matches": here == plan.command_template}


def _command(plan: TranscodePlan, renditions: list[dict], piece: dict, work: Path) -> list[str]:
    """The argument list the local run was given (paths as they were there)."""
    out = work / "local"
    return ["ffmpeg", *ffmpeg_args.video_renditions_args(
        profiles.get_profile(plan.profile),
        [(profiles.PlannedRendition.model_validate(r),
          out / r["name"] / f"seg_{piece['index']:05d}.ts") for r in renditions],
        fps=Fraction(plan.fps), start_s=piece["start_s"],
        input_path=work / ("input" + Path(piece["uri"]).suffix))]


def _render(report: dict) -> None:
    ffmpeg, template = report["ffmpeg"], report["template"]
    same = ffmpeg["recorded"] == [ffmpeg["here"]]
    console.print(f"job [bold]{report['job_id']}[/bold], segment {report['segment']}: "
                  f"template {template['stored']}, FFmpeg {', '.join(ffmpeg['recorded'])} "
                  f"on the worker{' and here' if same else ''}", highlight=False)
    if not same:
        console.print(f"[yellow]this machine runs FFmpeg {ffmpeg['here']}, not the worker's "
                      f"{', '.join(ffmpeg['recorded'])}: the bytes are not expected to match"
                      "[/yellow]", highlight=False)
    if not template["matches"]:
        console.print(f"[yellow]this code's command template ({template['here']}) is not the "
                      f"one the job stored ({template['stored']}): the local run is not the "
                      "worker's command[/yellow]", highlight=False)
    # Filter graphs hold "[s0]" and stream specifiers ":v:": neither is markup or an emoji.
    console.print(f"[dim]{escape(shlex.join(report['command']))}[/dim]", highlight=False,
                  emoji=False)
    for row in report["renditions"]:
        _render_rendition(row)
    console.print("[green]agree[/green]" if report["agree"] else "[red]disagree[/red]")


def _render_rendition(row: dict) -> None:
    verdict = {"identical": "[green]identical bytes[/green]", "agree": "[green]agree[/green]",
               "inconclusive": "[yellow]inconclusive: the local encode fails the checks "
                               "itself[/yellow]"}.get(row["verdict"], "[red]disagree[/red]")
    failing = f": fails {', '.join(row['failing'])}" if row["failing"] else ""
    console.print(f"\n[bold]{row['rendition']}[/bold] ({row['task']}) {verdict}{failing}",
                  highlight=False)
    record = row["recorded"]
    if record:
        console.print(f"  [dim]the worker's attempt {record['attempt']} encoded "
                      f"{record['renditions_in_run']} rendition(s) in its run; this run "
                      f"{row['renditions_in_run']}[/dim]", highlight=False)
    theirs, ours = row["delivered"], row["local"]
    if row["verdict"] == "identical" or theirs is None:
        console.print(f"  sha256 {ours['sha256']}", highlight=False)
        return
    table = Table("", "delivered", "here")
    for label, key in MEASURES:
        if key in theirs["measured"] or key in ours["measured"]:
            table.add_row(label, _cell(theirs["measured"].get(key)),
                          _cell(ours["measured"].get(key)))
    for name, ok in theirs["checks"].items():
        table.add_row(name, _mark(ok), _mark(ours["checks"].get(name)))
    console.print(table)


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19] + "…"
    return escape(str(value))


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else "[green]pass[/green]" if ok else "[red]FAIL[/red]"
