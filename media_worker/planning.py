"""Planning a transcode: the source's facts, its keyframe-aligned segments, one task per
segment × rendition plus one for the audio track.

The segments come one of two ways. Either the planner fetches the source and cuts it here
(stream copy where its keyframes already sit on the profile's boundaries, a mezzanine
re-encode first otherwise), or the client cut them itself while it uploaded
(`Manifest.segments`, what `proofline transcode` sends): then the planner reads only the
source's header, fetches the segments side by side and holds each against the source
(`chalicelib.media.client_split`) before any task runs, so the work starts sooner and a
client's mistake or lie fails the job with the reason instead of a worker's check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from chalicelib.aws.blobs import S3Uri
from chalicelib.context import Ports
from chalicelib.errors import InputError
from chalicelib.media import client_split, ffmpeg_args, profiles
from chalicelib.media import probe as media
from chalicelib.media import tasks as transcode
from chalicelib.models import Job, SegmentRef, Task, TranscodePlan

from . import segments
from .inputs import fetch_input
from .sidebyside import side_by_side

FFMPEG_TIMEOUT_S = 240
SEGMENT_LIMIT = 2 << 30
HEADER_TIMEOUT_S = 30


@dataclass(frozen=True)
class Source:
    """What the plan records of its source (a quote of the same file reads the same)."""
    width: int
    height: int
    rotation: int
    frame_rate: str              # the segments' rate, which the ladder's fps follows
    codec: str
    variable_frame_rate: bool | None
    duration_s: float
    size_bytes: int
    has_audio: bool
    sha256: str


class Stopwatch:
    """Seconds each step of a plan took, for its timeline entry."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str, result):
        now = time.monotonic()
        self.laps[name], self._last = round(now - self._last, 3), now
        return result


def plan_job(p: Ports, job: Job, workdir: Path, worker: str) -> None:
    """Refuse what the profile cannot serve, get the segments, and record the plan and its
    tasks (which `tasks.record_plan` dispatches)."""
    profile = profiles.get_profile(job.profile or job.manifest.profile)
    clock = Stopwatch()
    if job.manifest.segments:
        source, stored, method, reasons = _segments_sent(p, job, profile, workdir, clock)
    else:
        source, stored, method, reasons = _segments_cut(p, job, profile, workdir, clock)
    planned = profiles.ladder(profile, source.width, source.height, source.rotation)
    fps = profiles.output_fps(profile, Fraction(source.frame_rate))
    now = p.clock()
    task_attempts = 1 if job.challenge else job.max_attempts   # a challenge has one try
    tasks = [Task(job_id=job.job_id, task_id=f"{r.name}-{s['index']:05d}", kind="video",
                  rendition=r.name, index=s["index"], start_s=s["start_s"],
                  duration_s=s["duration_s"], input_uri=s["uri"], input_hash=s["sha256"],
                  max_attempts=task_attempts, updated_at=now)
             for r in planned for s in stored]
    if source.has_audio:
        tasks.append(Task(job_id=job.job_id, task_id="audio", kind="audio",
                          duration_s=source.duration_s, input_uri=job.input_uri,
                          input_hash=source.sha256, max_attempts=task_attempts, updated_at=now))
    plan = TranscodePlan(
        profile=profile.name, container=profile.container, segment_s=profile.segment_s,
        fps=str(fps), duration_s=round(sum(s["duration_s"] for s in stored), 6),
        renditions=[r.model_dump(mode="json") for r in planned], segments=stored,
        has_audio=source.has_audio,
        split={"method": method, "reasons": reasons, "seconds": clock.laps,
               # What a quote of this file would have read: the escrow's price uses it.
               "source": {"width": source.width, "height": source.height,
                          "rotation": source.rotation, "fps": source.frame_rate,
                          "codec": source.codec, "vfr": source.variable_frame_rate,
                          "duration_s": source.duration_s, "size_bytes": source.size_bytes}},
        command_template=ffmpeg_args.command_template(profile, planned, fps=fps))
    transcode.record_plan(p, job, plan, tasks)


# -- cut here -------------------------------------------------------------------------------
def _segments_cut(p: Ports, job: Job, profile: profiles.Profile, workdir: Path,
                  clock: Stopwatch) -> tuple[Source, list[dict], str, list[str]]:
    path = workdir / "source"
    digest = clock.lap("fetch", fetch_input(p, job, path))
    info = clock.lap("inspect", segments.inspect_source(path))
    profiles.check_source(profile, duration_s=info.duration_s, source_width=info.width,
                          source_height=info.height, rotation=info.rotation)
    split = segments.plan_split(info, profile.segment_s)
    pieces = clock.lap("split", segments.split_source(path, workdir / "split", split,
                                                      timeout_s=FFMPEG_TIMEOUT_S))
    stored = clock.lap("store", side_by_side(lambda piece: _store(p, piece), pieces))
    source = Source(width=info.width, height=info.height, rotation=info.rotation,
                    frame_rate=info.frame_rate, codec=info.codec,
                    variable_frame_rate=info.variable_frame_rate, duration_s=info.duration_s,
                    size_bytes=path.stat().st_size, has_audio=info.has_audio, sha256=digest)
    return source, stored, split.method, split.reasons


def _store(p: Ports, piece: segments.SourceSegment) -> dict:
    """A source segment under its content hash (kept if there already), as the plan lists it."""
    uri = S3Uri(p.settings.artifacts_bucket,
                f"segments/{piece.sha256.replace(':', '/')}{piece.path.suffix}")
    if p.blobs.head(uri) is None:
        p.blobs.upload(uri, piece.path)
    return {"index": piece.index, "start_s": piece.start_s, "duration_s": piece.duration_s,
            "uri": str(uri), "sha256": piece.sha256, "size_bytes": piece.path.stat().st_size}


# -- sent by the client -----------------------------------------------------------------------
def _segments_sent(p: Ports, job: Job, profile: profiles.Profile, workdir: Path,
                   clock: Stopwatch) -> tuple[Source, list[dict], str, list[str]]:
    uri = S3Uri.parse(job.input_uri)
    head = p.blobs.head(uri)
    if head is None:
        raise InputError(f"input {uri} is not there", reason="input_missing")
    size = int(head["ContentLength"])
    header = clock.lap("header", segments.probe_header(
        p.blobs.presign_get(uri, p.settings.presign_seconds), timeout_s=HEADER_TIMEOUT_S))
    profiles.check_source(profile, duration_s=header.duration_s, source_width=header.width,
                          source_height=header.height, rotation=header.rotation)
    refs = job.manifest.segments
    (workdir / "segments").mkdir()
    measured = clock.lap("measure", side_by_side(
        lambda item: _measure(p, item[1], workdir / "segments" / f"{item[0]:05d}"),
        list(enumerate(refs))))
    problems = client_split.measured_problems(refs, measured, client_split.SourceHeader(
        width=header.width, height=header.height, rotation=header.rotation,
        frame_rate=header.frame_rate, duration_s=header.duration_s))
    if problems:
        raise InputError(f"the segments sent are not the source cut as listed: {problems[0]}",
                         reason="segments_mismatch", details=problems[:20])
    stored = [{"index": index, "start_s": round(sum(m.duration_s for m in measured[:index]), 6),
               "duration_s": m.duration_s, "uri": ref.input_uri, "sha256": ref.input_hash,
               "size_bytes": (workdir / "segments" / f"{index:05d}").stat().st_size}
              for index, (ref, m) in enumerate(zip(refs, measured))]
    source = Source(width=header.width, height=header.height, rotation=header.rotation,
                    frame_rate=measured[0].frame_rate, codec=header.codec,
                    variable_frame_rate=None, duration_s=header.duration_s, size_bytes=size,
                    has_audio=header.has_audio, sha256=job.manifest.input_hash or "")
    return source, stored, "client", []


def _measure(p: Ports, ref: SegmentRef, path: Path) -> client_split.Measured:
    """Fetch one segment the client sent (its hash checked) and measure it."""
    p.blobs.download(S3Uri.parse(ref.input_uri), path, limit=SEGMENT_LIMIT)
    if ref.input_hash and media.sha256_file(path) != ref.input_hash:
        raise InputError(f"segment {ref.input_uri} does not match its hash",
                         reason="input_hash_mismatch")
    return segments.measure_client_segment(path)
