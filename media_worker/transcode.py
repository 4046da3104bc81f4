"""The FFmpeg side of a transcode job after its plan (`planning.py`): encode one segment's
tasks, verify one task, and assemble the checked package.

Workers encode; the verifier and the assembler are control-plane code that measures the
bytes it fetched itself and trusts nothing a worker reported.
"""
from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import av
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.aws.blobs import S3Uri, output_key
from chalicelib.context import Ports
from chalicelib.errors import InputError
from chalicelib.market import routing, workers
from chalicelib.media import ffmpeg_args, hls, profiles
from chalicelib.media import probe as media
from chalicelib.media import tasks as transcode
from chalicelib.models import Event, Job, Output, Task, TaskState, TranscodePlan, is_pool
from chalicelib.telemetry import cpu_seconds, logger
from chalicelib.verification import audit
from chalicelib.verification.package import check_package, task_verdicts
from chalicelib.verification.policies import Verdict

from . import verify
from .ffmpeg import decode_check, ffmpeg_version, run_ffmpeg
from .sidebyside import side_by_side

FFMPEG_TIMEOUT_S = 240
OUTPUT_LIMIT = 2 << 30
SOURCE_LIMIT = 16 << 30          # the audio check reads the whole source (job class limit: 10 GiB)
FINGERPRINT_LIMIT = 64 << 20
PLAYLIST_LIMIT = 1 << 20         # the audio track's playlist, read for the package's check
PACKAGE_TOLERANCE_S = 0.5


# -- one segment's tasks -------------------------------------------------------------------
def encode_tasks(p: Ports, job: Job, tasks: list[Task],
                 workdir: Path) -> dict[str, tuple[list[Path], dict]]:
    """Fetch the tasks' input once and run FFmpeg once for all of them (the renditions of
    one segment, or the audio task alone); each task's files, named by their package path."""
    source = workdir / ("input" + Path(tasks[0].input_uri).suffix)
    p.blobs.download(S3Uri.parse(tasks[0].input_uri), source, limit=OUTPUT_LIMIT)
    return encode_renditions(job.plan, tasks, source, workdir / "out")


def encode_renditions(plan: TranscodePlan, tasks: list[Task], source: Path,
                      out: Path) -> dict[str, tuple[list[Path], dict]]:
    """The encode itself, from a local copy of the tasks' input: the pool's Lambda and a
    marketplace worker's agent (`proofline worker run`) both run exactly this. Video tasks
    of one segment share one decode (`video_renditions_args`); each gets its own files and
    its share of the run's CPU time."""
    if any(t.input_uri != tasks[0].input_uri or t.input_hash != tasks[0].input_hash
           for t in tasks) or (len(tasks) > 1 and any(t.kind != "video" for t in tasks)):
        raise ValueError("only video tasks of one segment are encoded together")
    if media.sha256_file(source) != tasks[0].input_hash:
        raise InputError(f"task input {tasks[0].input_uri} does not match its hash",
                         reason="input_hash_mismatch")
    profile = profiles.get_profile(plan.profile)
    cpu_before = cpu_seconds()
    if tasks[0].kind == "video":
        targets = {t.task_id: out / t.rendition / f"seg_{t.index:05d}.ts" for t in tasks}
        for target in targets.values():
            target.parent.mkdir(parents=True)
        run = run_ffmpeg(ffmpeg_args.video_renditions_args(
            profile, [(_rendition(plan, t.rendition), targets[t.task_id]) for t in tasks],
            fps=Fraction(plan.fps), start_s=tasks[0].start_s, input_path=source),
            timeout_s=FFMPEG_TIMEOUT_S)
        files = {task_id: [target] for task_id, target in targets.items()}
    else:
        (out / "audio").mkdir(parents=True)
        run = run_ffmpeg(ffmpeg_args.audio_args(profile, input_path=source,
                                                output_dir=out / "audio"),
                         timeout_s=FFMPEG_TIMEOUT_S)
        files = {tasks[0].task_id: sorted(f for f in out.rglob("*") if f.is_file())}
    execution = {"exit_code": run.returncode, "wall_s": round(run.wall_s, 3),
                 "cpu_s": round((cpu_seconds() - cpu_before) / len(tasks), 3),
                 "renditions_in_run": len(tasks), "ffmpeg": ffmpeg_version(),
                 "stderr_tail": run.stderr[-500:]}
    return {task_id: (found, execution) for task_id, found in files.items()}


def encode_segment(plan: TranscodePlan, task: Task, source: Path,
                   out: Path) -> tuple[list[Path], dict]:
    """One task alone (what `encode_renditions` does for a group of one)."""
    return encode_renditions(plan, [task], source, out)[task.task_id]


def upload_outputs(p: Ports, task: Task, files: list[Path], root: Path) -> list[Output]:
    """Attempt-scoped keys: a retry or a duplicate never touches another attempt's files."""
    outputs = []
    for path in files:
        name = path.relative_to(root).as_posix()
        uri = S3Uri(p.settings.artifacts_bucket,
                    f"attempts/{task.job_id}/tasks/{task.task_id}/{task.attempt:03d}/{name}")
        p.blobs.upload(uri, path)
        outputs.append(Output(name=name, uri=str(uri), sha256=media.sha256_file(path),
                              size_bytes=path.stat().st_size))
    return outputs


def check_task(p: Ports, job: Job, task: Task, workdir: Path) -> tuple[Verdict, list[Output]]:
    """Measure the task's outputs from the bytes in storage (a marketplace worker's as
    frozen when it committed); promote them when they pass. Whether this segment's content
    is audited, and which frames, is drawn from the stage's audit secret and the hashes the
    worker committed to, at the depth its trust calls for."""
    cpu_before, started = cpu_seconds(), time.monotonic()
    local = {}
    actual = {}
    for output in task.outputs:
        path = workdir / "claimed" / output.name
        path.parent.mkdir(parents=True, exist_ok=True)
        p.blobs.download(S3Uri.parse(output.uri), path, limit=OUTPUT_LIMIT)
        local[output.name], actual[output.name] = path, media.sha256_file(path)
    verification = p.catalog.job_class(job.kind).verification
    key = audit.audit_key(p.audit_secret or "", subject=f"{task.job_id}~{task.task_id}#"
                          f"{task.attempt}", committed=[o.sha256 for o in task.outputs])
    depth = verification.content_audit
    history = workers.history(p.workers, task.worker, job.kind)
    rate = depth.rate(trusted=is_pool(task.worker), worth=float(routing.job_units(job)),
                      verified=history.verified_units) if depth else 1.0
    audited = audit.chance(key, "content") < rate
    verdict = (_check_video(p, job, task, workdir, local, actual,
                            key if audited else None, verification.ssim_frames)
               if task.kind == "video" else
               _check_audio(p, job, task, workdir, local, actual, audited))
    verdict = Verdict(verdict.policy, verdict.checks,
                      {**verdict.measured, "audit_rate": rate, "audited": audited,
                       "trusted": is_pool(task.worker),
                       "check_cpu_s": round(cpu_seconds() - cpu_before, 3),
                       "check_wall_s": round(time.monotonic() - started, 3)})
    promoted = [_promote(p, o) for o in task.outputs] if verdict.passed else []
    if None in promoted:
        verdict = Verdict(verdict.policy, {**verdict.checks, "promoted_bytes_match": False},
                          verdict.measured)
        promoted = []
    return verdict, promoted


def _check_video(p: Ports, job: Job, task: Task, workdir: Path, local: dict, actual: dict,
                 key: bytes | None, ssim_frames: int) -> Verdict:
    if len(task.outputs) != 1:
        return Verdict("segment_video", {"one_output": False}, {"files": sorted(actual)})
    output = task.outputs[0]
    source = reference = None
    if key is not None:
        source = workdir / "source.mkv"
        p.blobs.download(S3Uri.parse(task.input_uri), source, limit=OUTPUT_LIMIT)
        reference = _source_fingerprints(p, task, source, ssim_frames)
    return verify.judge_video(
        local[output.name], reported_sha256=output.sha256, actual_sha256=actual[output.name],
        planned=_rendition(job.plan, task.rendition), fps=Fraction(job.plan.fps),
        segment_s=job.plan.segment_s, start_s=task.start_s, source_duration_s=task.duration_s,
        source=source, reference=reference, key=key, ssim_frames=ssim_frames)


def _source_fingerprints(p: Ports, task: Task, source: Path,
                         ssim_frames: int) -> verify.Reference:
    """The source segment's fingerprints and the frames its audits may compare, decoded once
    for all its renditions' checks and kept beside the job (the verifier's own, so no worker
    can touch them). Which frames those are is drawn with the audit secret: no worker can
    know them, and every check of the segment draws its own among them."""
    cached = S3Uri(p.settings.artifacts_bucket,
                   f"fingerprints/{task.job_id}/{task.input_hash.replace(':', '/')}.npz")
    if p.blobs.head(cached) is not None:
        return verify.Reference.load(p.blobs.read(cached, FINGERPRINT_LIMIT))
    key = audit.audit_key(p.audit_secret or "", subject=f"{task.job_id}~source",
                          committed=[task.input_hash])
    reference = verify.Reference.of(source, task.duration_s, key=key, ssim_frames=ssim_frames)
    p.blobs.put(cached, reference.dump())
    return reference


def _check_audio(p: Ports, job: Job, task: Task, workdir: Path, local: dict, actual: dict,
                 audited: bool) -> Verdict:
    source = None
    if audited:
        source = workdir / "source"
        p.blobs.download(S3Uri.parse(task.input_uri), source, limit=SOURCE_LIMIT)
    return verify.judge_audio(local, reported={o.name: o.sha256 for o in task.outputs},
                              actual=actual, container=job.plan.container,
                              source_duration_s=task.duration_s, source=source)


def _promote(p: Ports, output: Output) -> Output | None:
    """To the content-addressed key, hashed again there: what is delivered is exactly what
    was measured (None if the stored bytes are not)."""
    target = S3Uri(p.settings.artifacts_bucket,
                   output_key(output.sha256, Path(output.name).name))
    if p.blobs.head(target) is None:
        p.blobs.copy(S3Uri.parse(output.uri), target)
    if p.blobs.sha256(target)[0] != output.sha256:
        return None
    return output.model_copy(update={"uri": str(target)})


def place_in_package(p: Ports, job: Job, task: Task) -> None:
    """A passed task's segments go into its job's package as soon as it passes (after its
    pass is committed, so only the check whose commit won places anything): the assembly
    then copies nothing but what is missing. Each copy is hashed by S3 as it is written; one
    that does not hash as its task recorded is removed, for the assembly to place again.
    Only names the task's kind may write are placed; playlists are the assembly's. Best
    effort: the pass is committed already, and what S3 refuses here the assembly copies."""
    if job.plan is None or job.plan.container != "hls":
        return
    folder = package_folder(p, job)
    misplaced = set(_misplaced(task))
    try:
        for output in task.outputs:
            if output.name in misplaced or output.name.endswith(".m3u8"):
                continue
            target = _in_package(folder, output.name)
            if not _place(p, output, target):
                p.blobs.delete(target)
    except (ClientError, BotoCoreError) as error:
        logger.warning("segment not placed in its package",
                       extra={"job_id": job.job_id, "task": task.task_id, "error": repr(error)})


def package_folder(p: Ports, job: Job) -> S3Uri:
    """Where a job's package is put together, one folder per job attempt (a job planned
    again may cut other segments). Only the verifier and the assembler write there; the
    package's identity is its listing's hash, recorded with the job."""
    return S3Uri(p.settings.artifacts_bucket, f"packages/{job.job_id}/{job.attempt:03d}")


def _rendition(plan: TranscodePlan, name: str) -> profiles.PlannedRendition:
    return profiles.PlannedRendition.model_validate(
        next(r for r in plan.renditions if r["name"] == name))


# -- assembly -----------------------------------------------------------------------------
def assemble(p: Ports, job: Job, workdir: Path, sign) -> Job | None:
    """Build the package from what the segment checks verified, check it, place it under its
    content hash and close the job (or fail it, with the reason)."""
    started = time.monotonic()
    view = p.store.view(job.job_id)             # the tasks and their verdicts, one Query
    tasks = {t.task_id: t for t in view.tasks}
    folder = package_folder(p, job)
    if job.plan.container == "hls":
        verdict, output = _assemble_hls(p, job.plan, folder, tasks, view.events)
    else:
        verdict, output = _assemble_mp4(p, job.plan, folder, tasks, workdir)
    return transcode.complete(p, job, output, verdict, signature=sign(job, output),
                              execution={"assembly_s": round(time.monotonic() - started, 3),
                                         "tasks": len(tasks)})


def _assemble_hls(p: Ports, plan: TranscodePlan, folder: S3Uri, tasks: dict[str, Task],
                  events: list[Event]) -> tuple[Verdict, Output]:
    """No segment is fetched or decoded again: each was measured and checked from its own
    bytes, promoted under their hash, and placed in the package when its task passed (a
    server-side copy hashed by S3 as it was written). The package relies on those verdicts,
    checks its playlists structurally, lists its folder once, and copies only what is
    missing or not the size its task recorded, each copy hashed again. Only the playlists
    pass through here: written from the plan (the audio track's, read back)."""
    video = {r["name"]: [f"{r['name']}-{s['index']:05d}" for s in plan.segments]
             for r in plan.renditions}
    audio = "audio" if plan.has_audio else None
    passed = {t.task_id: t for t in tasks.values() if t.state == TaskState.PASSED}
    basis = task_verdicts(_passing_verdicts(passed, events), renditions=video,
                          audio_task=audio)
    misplaced = [name for t in passed.values() for name in _misplaced(t)]
    delivered = {o.name: o for t in passed.values() for o in t.outputs
                 if o.name not in misplaced}
    playlists = _hls_playlists(plan)
    wrong: list[str] = []
    if audio is not None and hls.AUDIO_PLAYLIST in delivered:
        own = delivered.pop(hls.AUDIO_PLAYLIST)
        data = _read_playlist(p, own)
        if data is not None and media.sha256_bytes(data) == own.sha256:
            playlists[hls.AUDIO_PLAYLIST] = data
        else:
            wrong.append(hls.AUDIO_PLAYLIST)
    structure = check_package({**{path: None for path in delivered}, **playlists},
                              expected_duration_s=plan.duration_s,
                              tolerance_s=PACKAGE_TOLERANCE_S,
                              expected_segments=len(plan.segments))
    listed = {path: (media.sha256_bytes(data), len(data)) for path, data in playlists.items()}
    listed.update({path: (o.sha256, o.size_bytes) for path, o in delivered.items()})
    manifest, digest = _manifest(plan, hls.MASTER, listed)
    side_by_side(lambda item: p.blobs.put(_in_package(folder, item[0]), item[1],
                                          content_type=_content_type(Path(item[0]))),
                 list(playlists.items()))
    present = p.blobs.sizes(S3Uri(folder.bucket, f"{folder.key}/"),
                            limit=len(delivered) + len(playlists) + 100)
    missing = {path: o for path, o in delivered.items()
               if present.get(_in_package(folder, path).key) != o.size_bytes}
    copied = dict(zip(missing, side_by_side(         # each copy waits on S3 alone
        lambda item: _place(p, item[1], _in_package(folder, item[0])),
        list(missing.items()))))
    wrong += [path for path, ok in copied.items() if not ok]
    # The first failed check names the job's reason: a file that is not what was verified
    # comes first, whatever else it breaks.
    checks = {"files_match_recorded_sha256": not wrong, "outputs_named_as_planned": not misplaced,
              **basis.checks, **structure.checks}
    measured = {**structure.measured, **basis.measured, "misplaced_outputs": misplaced[:20],
                "files_not_matching_records": wrong[:20], "decoded": False,
                "segments_placed_when_passed": len(delivered) - len(missing),
                "segments_copied": len(missing)}
    return _package(p, plan, checks, measured, manifest, digest, folder, hls.MASTER, listed)


def _passing_verdicts(passed: dict[str, Task], events: list[Event]) -> dict[str, dict]:
    """Each passed task's verdict, as recorded when its passing attempt was checked."""
    found = {}
    for event in events:
        task = passed.get(event.task or "")
        if (event.type == "segment.verified" and task is not None
                and event.data.get("attempt") == task.attempt):
            found[task.task_id] = event.data
    return found


def _misplaced(task: Task) -> list[str]:
    """Output names other than the package paths the task's kind writes."""
    if task.kind == "video":
        return [o.name for o in task.outputs
                if o.name != f"{task.rendition}/seg_{task.index:05d}.ts"]
    return [o.name for o in task.outputs
            if not o.name.startswith("audio/") or "/" in o.name.removeprefix("audio/")
            or o.name.startswith("audio/.")]


def _hls_playlists(plan: TranscodePlan) -> dict[str, bytes]:
    """The master and each rendition's media playlist, from the plan (the segments last
    what their source segments last, which each segment's check held them to)."""
    fps = Fraction(plan.fps)
    entries = [(f"seg_{s['index']:05d}.ts", s["duration_s"]) for s in plan.segments]
    playlists, variants = {}, []
    for rendition in plan.renditions:
        playlists[hls.variant_uri(rendition["name"])] = hls.media_playlist(entries).encode()
        variants.append(hls.variant(profiles.PlannedRendition.model_validate(rendition), fps=fps))
    audio = hls.audio_group(profiles.get_profile(plan.profile)) if plan.has_audio else None
    playlists[hls.MASTER] = hls.master_playlist(variants, audio=audio).encode()
    return playlists


def _read_playlist(p: Ports, output: Output) -> bytes | None:
    try:
        return p.blobs.read(S3Uri.parse(output.uri), PLAYLIST_LIMIT)
    except InputError:                       # gone, or no playlist's size
        return None


def _place(p: Ports, output: Output, target: S3Uri) -> bool:
    """Put the promoted output at `target` by a server-side copy; whether what lies there
    now is the bytes its task recorded."""
    copied = p.blobs.copy_hashed(S3Uri.parse(output.uri), target,
                                 content_type=_content_type(target.key))
    return copied == output.sha256


def _manifest(plan: TranscodePlan, entry: str,
              listed: dict[str, tuple[str, int]]) -> tuple[bytes, str]:
    """package.json (the listing, paths in order) and its content hash: the package's
    identity, recorded as the job's output."""
    listing = {"profile": plan.profile, "entry": entry,
               "files": [{"path": path, "sha256": sha256, "size_bytes": size}
                         for path, (sha256, size) in sorted(listed.items())]}
    manifest = json.dumps(listing, indent=1, sort_keys=True).encode()
    return manifest, media.sha256_bytes(manifest)


def _in_package(folder: S3Uri, path: str) -> S3Uri:
    return S3Uri(folder.bucket, f"{folder.key}/{path}")


def _package(p: Ports, plan: TranscodePlan, checks: dict, measured: dict, manifest: bytes,
             digest: str, folder: S3Uri, entry: str,
             listed: dict[str, tuple[str, int]]) -> tuple[Verdict, Output]:
    """The verdict and package.json, written only for a package whose files are all as
    listed (a failed one is never handed out)."""
    package = _in_package(folder, "package.json")
    verdict = Verdict(f"{plan.container}_package", checks,
                      {**measured, "sha256": digest,
                       "entry": str(_in_package(folder, entry)), "files": len(listed),
                       "bytes": sum(size for _, size in listed.values())})
    if verdict.passed:
        p.blobs.put(package, manifest, content_type="application/json")
    return verdict, Output(name="package.json", uri=str(package), sha256=digest,
                           size_bytes=len(manifest))


def _assemble_mp4(p: Ports, plan: TranscodePlan, folder: S3Uri, tasks: dict[str, Task],
                  workdir: Path) -> tuple[Verdict, Output]:
    """Joining the segments into one file needs their bytes: fetch every promoted output,
    mux, check the file by decoding it, upload it to the job's package folder."""
    root = workdir / "package"
    for task in tasks.values():
        for output in task.outputs:
            path = root / output.name
            path.parent.mkdir(parents=True, exist_ok=True)
            p.blobs.download(S3Uri.parse(output.uri), path, limit=OUTPUT_LIMIT)
    checks, measured, entry = _join_mp4(plan, tasks, root)
    decode = decode_check(root / entry, timeout_s=FFMPEG_TIMEOUT_S * 4)
    checks["decodes_without_error"] = decode.ok
    measured["decode_wall_s"] = round(decode.wall_s, 3)
    if not decode.ok:
        measured["decode_stderr"] = decode.stderr[-500:]
    files = sorted(f for f in root.rglob("*") if f.is_file())
    listed = {f.relative_to(root).as_posix(): (media.sha256_file(f), f.stat().st_size)
              for f in files}
    manifest, digest = _manifest(plan, entry, listed)
    for f in files:
        p.blobs.upload(_in_package(folder, f.relative_to(root).as_posix()), f,
                       content_type=_content_type(f))
    return _package(p, plan, checks, measured, manifest, digest, folder, entry, listed)


def _join_mp4(plan: TranscodePlan, tasks: dict, root: Path):
    name = plan.renditions[0]["name"]
    parts = [root / name / f"seg_{s['index']:05d}.ts" for s in plan.segments]
    audio = root / "audio" / "audio.m4a" if plan.has_audio else None
    target = root / "video.mp4"
    run_ffmpeg(ffmpeg_args.mp4_mux_args(parts, audio_path=audio, output_path=target),
               timeout_s=FFMPEG_TIMEOUT_S)
    for part in parts:
        part.unlink()
    if audio:
        audio.unlink()
    with av.open(str(target)) as container:
        duration = float(container.duration or 0) / av.time_base
        has_audio = bool(container.streams.audio)
    checks = {"duration": abs(duration - plan.duration_s) <= PACKAGE_TOLERANCE_S,
              "audio_present": has_audio == plan.has_audio}
    return checks, {"duration_s": duration, "expected_duration_s": plan.duration_s}, "video.mp4"


def _content_type(path: Path | str) -> str:
    return {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t",
            ".mp4": "video/mp4", ".json": "application/json"}.get(Path(path).suffix,
                                                                  "application/octet-stream")
