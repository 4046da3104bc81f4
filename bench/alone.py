"""A finished transcode's pieces run again, one at a time, on the idle machine: each
segment's encode (what one Lambda per segment would spend, and its CPU against the raw
command's) and each rendition's check at both depths, with no queue, S3 round trip or
commit in between. `bench.transcode` reads the critical path and the checks' costs from
these.
"""
from __future__ import annotations

import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg

from chalicelib.aws.blobs import S3Uri
from chalicelib.media import profiles
from chalicelib.media.probe import sha256_file
from chalicelib.models import Task, TranscodePlan
from chalicelib.telemetry import cpu_seconds
from chalicelib.verification import audit
from media_worker import verify
from media_worker.transcode import encode_renditions
from proofline.client import Api


def source_segments(s3, job: dict, work: Path) -> dict[int, Path]:
    work.mkdir()
    sources = {}
    for piece in job["plan"]["segments"]:
        uri = S3Uri.parse(piece["uri"])
        sources[piece["index"]] = work / f"source_{piece['index']:05d}.mkv"
        s3.download_file(uri.bucket, uri.key, str(sources[piece["index"]]))
    return sources


@dataclass
class Alone:
    """Each segment's task run alone on the idle machine (every rendition from one decode,
    as the pool's worker runs it): what one Lambda per segment would spend."""
    seconds: dict[int, float]       # wall, by segment
    cpu_s: float                    # all of them, FFmpeg's CPU as the task measures it
    run_cpu_s: float                # one run over the first two frames of segment 0: what
                                    # starting FFmpeg and its encoders costs, per run


def encode_alone(job: dict, sources: dict[int, Path], work: Path) -> Alone:
    plan = TranscodePlan.model_validate(job["plan"])
    now = datetime.now(timezone.utc)

    def tasks_of(piece: dict) -> list[Task]:
        return [Task(job_id=job["job_id"], task_id=f"{r['name']}-{piece['index']:05d}",
                     kind="video", rendition=r["name"], index=piece["index"],
                     start_s=piece["start_s"], duration_s=piece["duration_s"],
                     input_uri=piece["uri"], input_hash=piece["sha256"], max_attempts=1,
                     updated_at=now) for r in plan.renditions]

    def cpu_of(runs: dict) -> float:     # each task holds its share of the run's CPU
        return sum(execution["cpu_s"] for _, execution in runs.values())

    timings, cpu = {}, 0.0
    for piece in plan.segments:
        began = time.perf_counter()
        runs = encode_renditions(plan, tasks_of(piece), sources[piece["index"]],
                                 work / str(piece["index"]))
        timings[piece["index"]] = time.perf_counter() - began
        cpu += cpu_of(runs)
    first = plan.segments[0]
    two_frames = work / "two-frames.mkv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i",
                    str(sources[first["index"]]), "-frames:v", "2", "-an", "-c", "copy",
                    str(two_frames)], check=True)
    short = {**first, "sha256": sha256_file(two_frames)}
    runs = encode_renditions(plan, tasks_of(short), two_frames, work / "two-frames")
    return Alone(timings, cpu, cpu_of(runs))


def verify_directly(api: Api, job: dict, sources: dict[int, Path],
                     work: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Seconds each produced video segment's check takes alone on the idle machine, at both
    depths: "light" (the hash, packets, structure and bitrate every segment gets) and "full"
    (also every frame's fingerprint and SSIM at 3 drawn frames, the source segment decoded
    too: what an audited segment, or any new worker's, gets), with the full check's CPU
    time; no queue waits, S3 round trips or task commits."""
    work.mkdir()
    timings: dict[tuple[str, int], dict[str, float]] = {}
    references: dict[int, tuple] = {}
    durations = {p["index"]: p["duration_s"] for p in job["plan"]["segments"]}
    renditions = {r["name"] for r in job["plan"]["renditions"]}
    for f in api.package(job["job_id"])["files"]:
        rendition, _, name = f["path"].partition("/")
        if rendition not in renditions or not name.endswith(".ts"):
            continue
        local = work / f["path"]
        local.parent.mkdir(exist_ok=True)
        with urllib.request.urlopen(f["download_url"]) as response:
            local.write_bytes(response.read())
        index = int(name.removeprefix("seg_").removesuffix(".ts"))
        planned = profiles.PlannedRendition.model_validate(
            next(r for r in job["plan"]["renditions"] if r["name"] == rendition))
        common = dict(reported_sha256="", actual_sha256="", planned=planned,
                      fps=Fraction(job["plan"]["fps"]), segment_s=job["plan"]["segment_s"],
                      start_s=0.0, source_duration_s=durations[index], ssim_frames=3)
        began = time.perf_counter()
        verify.judge_video(local, source=None, reference=None, key=None, **common)
        light = time.perf_counter() - began
        # The source segment's fingerprints are made once for all its renditions (the
        # verifier keeps them beside the job): their CPU counts once, and every check's
        # wall time includes them (the first of a segment's checks makes them).
        if index not in references:
            began, cpu = time.perf_counter(), cpu_seconds()
            made = verify.Reference.of(sources[index], durations[index], ssim_frames=3,
                                       key=audit.audit_key(secrets.token_hex(32),
                                                           subject=str(index), committed=[]))
            references[index] = (made, time.perf_counter() - began, cpu_seconds() - cpu)
        reference, reference_s, reference_cpu = references[index]
        began, cpu = time.perf_counter(), cpu_seconds()
        verify.judge_video(local, source=sources[index], reference=reference,
                           key=audit.audit_key(secrets.token_hex(32), subject=f["path"],
                                               committed=[f["sha256"]]), **common)
        first = not any(i == index for _, i in timings)
        timings[rendition, index] = {
            "light": light, "full": reference_s + time.perf_counter() - began,
            "full_cpu": cpu_seconds() - cpu + (reference_cpu if first else 0.0)}
    return timings
