"""Transcodes end to end on the local stack: split, segment tasks on the worker pool, every
segment verified against the source, the package assembled from what those checks verified
(no segment fetched or decoded again) and checked."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from pathlib import Path

import imageio_ffmpeg
import m3u8
import pytest
from conftest import INTAKE, drop, event_types, fund_job, wait_for

from chalicelib.media import tasks as task_service
from chalicelib.models import TaskState
from chalicelib.verification.audit import caught_probability
from chalicelib.verification.policies import Verdict
from chalicelib.verification.segments import SSIM_MIN
from proofline import clips

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    """640x480 at 25 fps, keyframes every 4 s, 6 s with a tone: two segments, two rungs."""
    return clips.make_gop_clip(media_dir / "source.mp4", seconds=6.0, gop=100, width=640,
                               height=480, fps=25)


def submit(api, path: Path, **fields) -> dict:
    slot = api.upload(path)
    job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                         "input_hash": slot["input_hash"], **fields},
                        idempotency_key=str(uuid.uuid4()))
    return job


def timeline(api, job_id: str) -> str:
    """The job's events, one line each with the facts a failure needs."""
    keep = ("reason", "checks", "measured", "message", "last")
    return "\n".join(f"{e['type']} {e.get('task') or ''} "
                     f"{json.dumps({k: v for k, v in e['data'].items() if k in keep})[:800]}"
                     for e in api.events(job_id)["events"])


def download_package(api, job_id: str, target: Path) -> Path:
    import urllib.request
    package = api.package(job_id)
    for f in package["files"]:
        path = target / f["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(f["download_url"]) as response:
            path.write_bytes(response.read())
    return target / package["entry"]


def test_a_transcode_produces_a_verified_playable_hls_ladder(api, source, tmp_path):
    job = submit(api, source, profile="hls-abr")
    final = wait_for(api, job["job_id"], timeout=180)
    assert final["state"] == "settled", timeline(api, job["job_id"])
    plan = final["plan"]
    assert [r["name"] for r in plan["renditions"]] == ["480p", "360p"]      # never upscaled
    assert len(plan["segments"]) == 2 and plan["split"]["method"] == "copy"
    events = api.events(job["job_id"])["events"]
    verified = [e for e in events if e["type"] == "segment.verified"]
    assert len(verified) == 2 * 2 + 1                                     # + the audio track
    video = [e for e in verified if e["data"]["rendition"]]
    assert {e["data"]["checks"]["starts_on_keyframe"] for e in video} == {True}
    assert {e["data"]["checks"]["frame_count"] for e in video} == {True}
    assert {e["data"]["measured"]["trusted"] for e in video} == {True}    # the media pool's
    audited = [e for e in video if e["data"]["measured"]["content_audited"]]
    assert all(e["data"]["measured"]["ssim_min"] >= SSIM_MIN for e in audited)
    stated = api.job(job["job_id"])["verification"]       # what the client is told it got
    assert (stated["unit"], stated["population"], stated["audited"]) == (
        "video segments", 4, len(audited))
    assert stated["caught_if_faked"]["5%"] == pytest.approx(
        caught_probability(4, len(audited), 0.05), abs=1e-6)
    types = event_types(api, job["job_id"])
    assert types.index("segments.planned") < types.index("validation.passed")
    [package] = [e["data"] for e in events if e["type"] == "validation.passed"]
    assert package["policy"] == "hls_package" and package["measured"]["decoded"] is False
    assert "decode_wall_s" not in package["measured"]
    assert package["measured"]["task_verdicts"] == {"video": 4, "audio": 1,
                                                    "content_audited": len(audited)}
    assert package["checks"]["files_match_recorded_sha256"] is True

    master = download_package(api, job["job_id"], tmp_path / "pkg")
    parsed = m3u8.load(str(master))
    assert parsed.is_variant and len(parsed.playlists) == 2
    assert {p.stream_info.resolution for p in parsed.playlists} == {(640, 480), (480, 360)}
    assert all("avc1" in p.stream_info.codecs and "mp4a" in p.stream_info.codecs
               for p in parsed.playlists)
    for playlist in parsed.playlists:
        media = m3u8.load(str(master.parent / playlist.uri))
        assert abs(sum(s.duration for s in media.segments) - 6.0) < 0.1
    decode = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(master),
                             "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert decode.returncode == 0 and decode.stderr == ""


# -- workers that lie, truncate, die or repeat themselves ------------------------------------
class RecordingQueues:
    def __init__(self):
        self.sent = []

    def send(self, queue, message):
        self.sent.append((queue, json.loads(json.dumps(message))))


@pytest.fixture(scope="module")
def small(media_dir) -> Path:
    """320x240, 6 s, keyframes every 4 s: two segments of one rendition, plus audio."""
    return clips.make_gop_clip(media_dir / "small.mp4", seconds=6.0, gop=100, width=320,
                               height=240, fps=25)


def planned_job(ports, api, path: Path, tmp_path: Path, held=None, **fields):
    """A transcode planned by hand with its task messages held back (in `held`'s queues,
    when given): the test decides who works on each task. Returns (job, tasks)."""
    from chalicelib.jobs import attempts
    from chalicelib.jobs import lifecycle as jobs
    from chalicelib.models import Manifest
    from media_worker import planning
    held = held or dataclasses.replace(ports, queues=RecordingQueues())
    slot = api.upload(path)
    manifest = Manifest(kind="ffmpeg_hls", input_uri=slot["input_uri"],
                        input_hash=slot["input_hash"], profile="hls-abr", **fields)
    job, _ = jobs.accept(held, manifest, job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    planning.plan_job(held, running, tmp_path, "pool:media")
    return held.store.get(job.job_id), held.tasks.list(job.job_id)


def dishonest_submit(ports, job, task, tmp_path: Path, corrupt) -> None:
    """Act as a worker that starts `task` and submits what `corrupt(path)` leaves of an
    honest-looking encode."""
    from chalicelib.media import tasks as transcode
    from media_worker import transcode as worker
    started = transcode.start(ports, job.job_id, task.task_id, task.attempt, "worker:mallory",
                              redelivered=False)
    assert started is not None
    job, task = started
    (tmp_path / task.task_id).mkdir()
    files, _ = worker.encode_tasks(ports, job, [task], tmp_path / task.task_id)[task.task_id]
    [segment] = files
    corrupt(segment)
    outputs = worker.upload_outputs(ports, task, files, tmp_path / task.task_id / "out")
    transcode.submit(ports, task, outputs, {"worker": "mallory"})


def other_video(media_dir: Path):
    """Replace a segment by a valid encode of another clip, same size, length and timing."""
    def swap(segment: Path) -> None:
        import av
        with av.open(str(segment)) as probe:
            stream = probe.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            start = float(stream.start_time * stream.time_base)
        fake = clips.make_clip(media_dir / f"fake-{width}.mp4", seconds=4.0, width=width,
                               height=height, fps=25, audio=False, seed_pattern="smptebars")
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(fake),
                        "-c:v", "libx264", "-profile:v", "main", "-g", "100", "-bf", "0", "-an",
                        "-output_ts_offset", str(start), "-muxdelay", "0", "-muxpreload", "0",
                        "-f", "mpegts", str(segment)],
                       check=True, timeout=60)
    return swap


def truncate(segment: Path) -> None:
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) // 2 // 188 * 188])      # whole TS packets, half of them


def release_all(ports, tasks, but=()) -> None:
    from chalicelib.media import tasks as transcode
    for task in tasks:
        if task.task_id not in but:
            transcode.send_task(ports, task)


@pytest.mark.parametrize("liar", ["other_video", "truncated"])
def test_a_lying_worker_is_caught_by_verification_and_the_segment_redone(
        liar, ports, api, small, media_dir, tmp_path):
    job, tasks = planned_job(ports, api, small, tmp_path)
    victim = next(t for t in tasks if t.kind == "video" and t.index == 0)
    corrupt = other_video(media_dir) if liar == "other_video" else truncate
    dishonest_submit(ports, job, victim, tmp_path, corrupt)
    release_all(ports, tasks, but={victim.task_id})
    final = wait_for(api, job.job_id, timeout=120)
    assert final["state"] == "settled", timeline(api, job.job_id)
    events = api.events(job.job_id)["events"]
    [rejected] = [e for e in events if e["type"] == "segment.rejected"]
    assert rejected["task"] == victim.task_id and rejected["data"]["passed"] is False
    failed = {name for name, ok in rejected["data"]["checks"].items() if not ok}
    if liar == "other_video":       # a valid encode in every respect but its picture
        assert "every_frame_matches_source" in failed
        assert failed <= {"every_frame_matches_source", "audited_frames_match_source",
                          "audited_frames_keep_detail", "bitrate"}
        assert rejected["data"]["measured"]["trusted"] is False     # not a pool: full depth
        assert rejected["data"]["measured"]["frames_off_count"] > 0
    else:
        assert "duration" in failed
    redone = next(t for t in api.job(job.job_id)["progress"]["by_rendition"].values())
    assert redone["passed"] == redone["total"]
    assert ports.tasks.get(job.job_id, victim.task_id).attempt == 2


def test_a_worker_killed_mid_segment_is_recovered_through_redelivery(ports, api, small, tmp_path):
    from chalicelib.media import tasks as transcode
    from media_worker import handler
    from proofline.pump import LambdaContext, sqs_event
    job, tasks = planned_job(ports, api, small, tmp_path)
    victim = next(t for t in tasks if t.kind == "video")
    started = transcode.start(ports, job.job_id, victim.task_id, 1, "pool:media",
                              redelivered=False)                        # then the worker died
    assert started is not None
    message = {"type": "task", "job_id": job.job_id, "task_id": victim.task_id, "attempt": 1}
    event = sqs_event([{"MessageId": str(uuid.uuid4()), "ReceiptHandle": "h",
                        "Body": json.dumps(message),
                        "Attributes": {"ApproximateReceiveCount": "2",
                                       "SentTimestamp": "1700000000000"}}],
                      "arn:aws:sqs:us-east-1:123456789012:proofline-local-segments", "us-east-1")
    assert handler.segments_handler(event, LambdaContext("segments", 60)) == {"batchItemFailures": []}
    release_all(ports, tasks, but={victim.task_id})
    final = wait_for(api, job.job_id, timeout=120)
    assert final["state"] == "settled", timeline(api, job.job_id)
    lost = [e for e in api.events(job.job_id)["events"] if e["type"] == "segment.lost"]
    assert [e["task"] for e in lost] == [victim.task_id]
    passed = ports.tasks.get(job.job_id, victim.task_id)
    assert passed.attempt == 2
    # The dead worker comes back late with its attempt: refused, the promoted output stays.
    _, stale = started
    fake = passed.outputs[0].model_copy(update={"sha256": "sha256:" + "0" * 64})
    assert transcode.submit(ports, stale, [fake], {}) is None
    assert ports.tasks.get(job.job_id, victim.task_id).outputs == passed.outputs
    assert [o["sha256"] for o in api.job(job.job_id)["outputs"]] == \
        [o["sha256"] for o in final["outputs"]]


def test_every_message_delivered_twice_yields_one_output(ports, api, small, tmp_path):
    job, tasks = planned_job(ports, api, small, tmp_path)
    release_all(ports, tasks)
    release_all(ports, tasks)                                   # each task message twice
    final = wait_for(api, job.job_id, timeout=120)
    assert final["state"] == "settled", timeline(api, job.job_id)
    events = api.events(job.job_id)["events"]
    verified = [e["task"] for e in events if e["type"] == "segment.verified"]
    assert sorted(verified) == sorted(t.task_id for t in tasks)            # once each
    assert [e["type"] for e in events].count("validation.passed") == 1
    assert len(final["outputs"]) == 1
    assert all(ports.tasks.get(job.job_id, t.task_id).attempt == 1 for t in tasks)


def test_attempts_exhausted_on_one_segment_fail_the_job_with_the_reason(ports, api, small,
                                                                        media_dir, tmp_path):
    job, tasks = planned_job(ports, api, small, tmp_path, max_attempts=1)
    victim = next(t for t in tasks if t.kind == "video")
    dishonest_submit(ports, job, victim, tmp_path, truncate)
    final = wait_for(api, job.job_id, timeout=60)
    assert final["state"] == "failed" and final["reason"] == "segment_failed"
    failed = [e for e in api.events(job.job_id)["events"] if e["type"] == "job.failed"]
    assert failed[0]["data"]["task"] == victim.task_id


# -- the S3 door -----------------------------------------------------------------------------
def test_a_drop_under_a_profile_prefix_produces_the_package(api, aws, small):
    job_id, _ = drop(aws, f"intake/hls-720p/drop-{uuid.uuid4().hex[:8]}.mov", path=small)
    final = wait_for(api, job_id, timeout=120)
    assert final["state"] == "settled", timeline(api, job_id)
    assert final["kind"] == "ffmpeg_hls" and final["profile"] == "hls-720p"
    assert final["outputs"][0]["uri"].startswith("s3://proofline-local-artifacts/packages/")
    package = api.package(job_id)
    assert package["entry"] == "master.m3u8" and package["entry_uri"].startswith("s3://")
    assert INTAKE not in package["entry_uri"]


# -- assembly: from what the segment checks verified ----------------------------------------
def drive_in_process(held) -> dict:
    """Run every segments- and checks-queue message the held ports recorded (each
    segment's encode, then each task's check) in this process, as the pool's worker would;
    returns the assembly request the last check made, held back."""
    import tempfile

    from media_worker import handler
    assembly = None
    while held.queues.sent:
        queue, message = held.queues.sent.pop(0)
        if queue not in ("segments", "checks"):
            continue
        if message["type"] == "assemble":
            assembly = message
            continue
        with tempfile.TemporaryDirectory(prefix="proofline-test-") as work:
            handler.SEGMENT_WORK[message["type"]](held, message, Path(work), False)
    assert assembly is not None, "the last check asks for the assembly"
    return assembly


def assemble_observed(held, message: dict, tmp_path: Path, monkeypatch) -> list[tuple]:
    """The held assembly, run here with every S3 call it makes recorded (operation, key,
    copy source key) and FFmpeg's decoder out of reach."""
    import contextvars
    from urllib.parse import unquote

    import media_worker.ffmpeg
    from chalicelib import aws as aws_adapter
    from media_worker import handler
    from media_worker import transcode as worker

    def no_decoding(*args, **kwargs):
        raise AssertionError("the HLS assembly decodes nothing")
    monkeypatch.setattr(media_worker.ffmpeg, "decode_check", no_decoding)
    monkeypatch.setattr(worker, "decode_check", no_decoding)
    monkeypatch.setattr(worker, "run_ffmpeg", no_decoding)
    seen: list[tuple] = []
    # The stack's own threads share this process: only the assembly's calls count (its
    # transfers run on threads of their own, in copies of its context).
    ours = contextvars.ContextVar("assembly_under_test", default=False)
    token = ours.set(True)

    def observe(service, operation, params, presigned):
        if service == "s3" and ours.get():
            source = params.get("CopySource")       # "bucket/key" once botocore quoted it
            if isinstance(source, str):
                source = unquote(source.lstrip("/").partition("/")[2].split("?")[0])
            elif isinstance(source, dict):
                source = source["Key"]
            seen.append((operation, params.get("Key"), source))
    aws_adapter.observers.append(observe)
    try:
        (tmp_path / "assembly").mkdir()
        handler.SEGMENT_WORK["assemble"](held, message, tmp_path / "assembly", False)
    finally:
        aws_adapter.observers.remove(observe)
        ours.reset(token)
    return seen


@pytest.fixture(scope="module")
def own_clips(media_dir):
    """Sources no other test encodes (24 fps, a length per test: two segments each), so
    their promoted outputs and packages are theirs alone."""
    return lambda seconds: clips.make_gop_clip(media_dir / f"own-{seconds}.mp4", seconds=seconds,
                                               gop=96, width=320, height=240, fps=24)


def test_the_package_is_assembled_without_fetching_or_decoding_a_segment(
        ports, api, own_clips, tmp_path, monkeypatch):
    import hashlib
    import urllib.request
    job, tasks = planned_job(ports, api, own_clips(6.0), tmp_path)
    held = dataclasses.replace(ports, queues=RecordingQueues())
    held.queues.sent = [("segments", {"type": "task", "job_id": job.job_id,
                                      "task_id": t.task_id, "attempt": 1}) for t in tasks]
    assembly = drive_in_process(held)
    # A second check of a passed task, holding the task as it read it before the pass (a
    # duplicate delivery, a stale attempt's), loses its commit and places nothing.
    won = next(t for t in ports.tasks.list(job.job_id) if t.kind == "video")
    stale = won.model_copy(update={"state": TaskState.SUBMITTED, "version": won.version - 1})
    placed_by_loser: list = []
    assert task_service.judged(held, stale, Verdict("segment_video", {"ok": True}, {}),
                               won.outputs, after_pass=placed_by_loser.append) is None
    assert placed_by_loser == []
    seen = assemble_observed(held, assembly, tmp_path, monkeypatch)

    final = api.job(job.job_id)
    assert final["state"] == "settled", timeline(api, job.job_id)
    promoted = {o.name: o for t in ports.tasks.list(job.job_id) for o in t.outputs}
    media = [name for name in promoted if name.endswith(".ts")]
    assert len(media) >= 3                              # two video segments, the audio's
    # The only object read is the audio track's playlist, and no segment is copied: each
    # was placed in the package when its task passed. The folder is listed once.
    reads = [key for op, key, _ in seen if op == "GetObject"]
    assert reads == [promoted["audio/audio.m3u8"].uri.split("/", 3)[3]]
    assert not [op for op, _, _ in seen if op == "CopyObject"]
    assert [op for op, _, _ in seen if op == "ListObjectsV2"] == ["ListObjectsV2"]
    assert not [op for op, _, _ in seen if op not in ("GetObject", "PutObject", "ListObjectsV2")]
    [passed] = [e["data"] for e in api.events(job.job_id)["events"]
                if e["type"] == "validation.passed"]
    assert passed["measured"]["decoded"] is False and passed["passed"] is True
    assert passed["measured"]["task_verdicts"]["video"] == 2
    assert passed["measured"]["task_verdicts"]["audio"] == 1
    assert passed["measured"]["segments_placed_when_passed"] == len(media)
    assert passed["measured"]["segments_copied"] == 0

    # What the client gets: the listing names each segment by its recorded hash, and the
    # bytes behind every link are those.
    package = api.package(job.job_id)
    listed = {f["path"]: f for f in package["files"]}
    assert {name: (o.sha256, o.size_bytes) for name, o in promoted.items()} == \
        {name: (listed[name]["sha256"], listed[name]["size_bytes"]) for name in promoted}
    for f in package["files"]:
        with urllib.request.urlopen(f["download_url"]) as response:
            data = response.read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
    master = download_package(api, job.job_id, tmp_path / "pkg")
    decode = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(master),
                             "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert decode.returncode == 0 and decode.stderr == ""


def test_a_segment_s3_would_not_place_when_it_passed_is_copied_at_the_assembly(
        ports, api, own_clips, tmp_path, monkeypatch):
    """Placing a passed segment is best effort: its pass is committed already. S3 refusing
    every placement neither fails a check nor holds the job back; the assembly copies each
    segment itself, hash-checked, and the job settles."""
    from botocore.exceptions import ClientError
    job, tasks = planned_job(ports, api, own_clips(5.0), tmp_path)
    held = dataclasses.replace(ports, queues=RecordingQueues())
    held.queues.sent = [("segments", {"type": "task", "job_id": job.job_id,
                                      "task_id": t.task_id, "attempt": 1}) for t in tasks]
    copy = held.blobs.copy_hashed

    def refused_in_packages(source, target, content_type=None):
        if target.key.startswith("packages/"):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "busy"}}, "CopyObject")
        return copy(source, target, content_type)
    monkeypatch.setattr(held.blobs, "copy_hashed", refused_in_packages)
    assembly = drive_in_process(held)               # every check passed; assembly requested
    monkeypatch.undo()
    seen = assemble_observed(held, assembly, tmp_path, monkeypatch)
    final = api.job(job.job_id)
    assert final["state"] == "settled", timeline(api, job.job_id)
    media = [o.name for t in ports.tasks.list(job.job_id) for o in t.outputs
             if o.name.endswith(".ts")]
    assert len([op for op, _, _ in seen if op == "CopyObject"]) == len(media)
    [passed] = [e["data"] for e in api.events(job.job_id)["events"]
                if e["type"] == "validation.passed"]
    assert passed["measured"]["segments_placed_when_passed"] == 0
    assert passed["measured"]["segments_copied"] == len(media)


@pytest.mark.parametrize("damage", ["none", "altered", "deleted"])
def test_a_segment_missing_from_the_package_is_placed_again_hash_checked(
        damage, ports, api, own_clips, tmp_path, monkeypatch):
    """A segment is placed in the package when its task passes; one missing there at the
    assembly (a crash between the pass and the copy) is copied then from its promoted
    output and hashed again: the job settles when those bytes are what was verified, and
    fails, nothing handed out, when the promoted output changed or is gone. A placement
    whose copy does not hash as recorded leaves nothing in the package."""
    from chalicelib.aws.blobs import S3Uri
    from media_worker import transcode as worker
    seconds = {"none": 5.5, "altered": 7.0, "deleted": 6.5}[damage]
    job, tasks = planned_job(ports, api, own_clips(seconds), tmp_path)
    held = dataclasses.replace(ports, queues=RecordingQueues())
    held.queues.sent = [("segments", {"type": "task", "job_id": job.job_id,
                                      "task_id": t.task_id, "attempt": 1}) for t in tasks]
    assembly = drive_in_process(held)
    victim = next(t for t in ports.tasks.list(job.job_id) if t.kind == "video" and t.index == 1)
    [output] = victim.outputs
    placed = S3Uri(ports.settings.artifacts_bucket,
                   f"{worker.package_folder(ports, ports.store.get(job.job_id)).key}/{output.name}")
    assert ports.blobs.sha256(placed)[0] == output.sha256      # placed when it passed
    uri = S3Uri.parse(output.uri)
    original = ports.blobs.read(uri, 1 << 30)
    if damage == "altered":          # the same length, one TS packet's payload changed
        ports.blobs.put(uri, original[:1000] + bytes(188) + original[1188:])
        worker.place_in_package(ports, ports.store.get(job.job_id), victim)    # placed again
        assert ports.blobs.head(placed) is None
    else:
        ports.blobs.delete(placed)
    if damage == "deleted":
        ports.blobs.delete(uri)
    try:
        seen = assemble_observed(held, assembly, tmp_path, monkeypatch)
    finally:
        ports.blobs.put(uri, original)      # content-addressed: put back what was verified
    final = api.job(job.job_id)
    assert [source for op, _, source in seen if op == "CopyObject"] == [uri.key]
    if damage == "none":
        assert final["state"] == "settled", timeline(api, job.job_id)
        assert ports.blobs.sha256(placed)[0] == output.sha256
        [passed] = [e["data"] for e in api.events(job.job_id)["events"]
                    if e["type"] == "validation.passed"]
        assert passed["measured"]["segments_copied"] == 1
        return
    assert (final["state"], final["reason"]) == (
        "failed", "check_failed:files_match_recorded_sha256"), timeline(api, job.job_id)
    assert final["outputs"] == []
    [failed] = [e["data"] for e in api.events(job.job_id)["events"]
                if e["type"] == "validation.failed"]
    assert failed["measured"]["files_not_matching_records"] == [output.name]
    assert failed["checks"]["tasks_verified"] is True        # its check had passed it


# -- bad input -------------------------------------------------------------------------------
BAD_INPUTS = {
    "corrupt bytes": (lambda d: clips.make_corrupt(d / "corrupt.mov"), "media_unreadable"),
    "zero-length file": (lambda d: clips.make_empty(d / "empty.mov"), "input_empty"),
    "audio only": (lambda d: clips.make_clip(d / "tone.m4a", seconds=2.0, video=False),
                   "no_video_stream"),
    "a still image": (lambda d: clips.make_still(d / "still.png"), "not_a_video"),
    "undecodable video": (lambda d: clips.make_garbled_video(d / "garbled.mp4"),
                          "media_undecodable"),
    "shorter than the minimum": (lambda d: clips.make_clip(d / "blink.mp4", seconds=0.2),
                                 "source_too_short"),
    "larger than the profile takes": (
        lambda d: clips.make_clip(d / "wide.mp4", seconds=0.6, width=8208, height=64,
                                  audio=False), "source_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_the_job_with_a_clear_reason(case, api, ports, media_dir):
    make, reason = BAD_INPUTS[case]
    job = submit(api, make(media_dir))
    final = wait_for(api, job["job_id"], timeout=60)
    assert (final["state"], final["reason"]) == ("failed", reason), timeline(api, job["job_id"])
    assert final["outputs"] == [] and "progress" not in final          # nothing half-done
    assert ports.tasks.list(job["job_id"]) == []


def test_a_profile_that_does_not_exist_is_refused_at_the_door(api, small):
    from proofline.client import ApiError
    with pytest.raises(ApiError) as refused:
        submit(api, small, profile="hls-8k-hdr")
    assert (refused.value.status, refused.value.reason) == (400, "unknown_profile")
    assert "hls-abr" in refused.value.details["known"]


ODD_BUT_SERVABLE = {
    # source -> (why stream copy is not possible, the planned output size)
    "odd dimensions": (lambda d: clips.make_odd_clip(d / "odd.mp4", seconds=2.0),
                       "odd_dimensions", (318, 238)),      # never upscaled
    "rotation metadata": (lambda d: clips.make_rotated_clip(d / "rotated.mp4", rotation=90,
                                                            seconds=2.0), "rotated", (240, 320)),
    "variable frame rate": (lambda d: clips.make_vfr_clip(d / "vfr.mp4", seconds=3.0),
                            "variable_frame_rate", (320, 240)),
    "unsupported codec for copy": (lambda d: clips.make_mpeg2_clip(d / "mpeg2.mkv", seconds=2.0),
                                   "codec", (320, 240)),
    "shorter than one segment": (lambda d: clips.make_gop_clip(d / "short.mp4", seconds=1.0,
                                                               gop=25), None, (320, 240)),
}


@pytest.mark.parametrize("case", list(ODD_BUT_SERVABLE))
def test_sources_that_need_normalizing_come_out_as_a_clean_ladder(case, api, media_dir, tmp_path):
    make, why, size = ODD_BUT_SERVABLE[case]
    job = submit(api, make(media_dir))
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled", timeline(api, job["job_id"])
    plan = final["plan"]
    if why:
        assert plan["split"]["method"] == "mezzanine" and why in plan["split"]["reasons"]
    else:
        assert len(plan["segments"]) == 1
    [rendition] = plan["renditions"]
    assert (rendition["width"], rendition["height"]) == size
    master = download_package(api, job["job_id"], tmp_path / "pkg")
    decode = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(master),
                             "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert decode.returncode == 0 and decode.stderr == ""


def test_an_escrow_transcode_pays_the_pool_its_quoted_price_and_returns_the_change(
        client_api, stack, small):
    from web3 import Web3

    from chalicelib.settlement import pricing
    from chalicelib.settlement.escrow import result_hash
    from chalicelib.settlement.money import to_base_units
    api = client_api
    w3 = Web3(Web3.HTTPProvider(stack.info.rpc_url))
    pool = stack.info.dev_keys["pool_address"]
    job = submit(api, small, profile="hls-720p", payment_policy="escrow_before_start",
                 max_price="0.02")
    assert job["state"] == "requested" and job["escrow"]["price"] is None   # not probed yet
    from chalicelib.settlement.chain import NATIVE, Escrow
    escrow = Escrow(w3, stack.info.escrow_address)
    before = escrow.credit(NATIVE, pool)
    fund_job(stack, job)
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled", timeline(api, job["job_id"])
    events = api.events(job["job_id"])["events"]
    [released] = [e for e in events if e["type"] == "settlement.released"]
    package_hash = final["outputs"][0]["sha256"]
    assert released["data"]["result_hash"] == "0x" + result_hash([package_hash]).hex()
    # The price is the transcode quote of the probed source, in ETH, fixed before the
    # chain's assign; the pool is paid exactly that and the client gets the rest back.
    from chalicelib.models import TranscodePlan
    plan = TranscodePlan.model_validate(final["plan"])
    price = to_base_units(pricing.transcode_price(plan, "ETH", 18).total, 18)
    [assigned] = [e for e in events if e["type"] == "escrow.assigned"]
    assert assigned["data"]["price"] == str(price) == str(final["escrow"]["price"])
    assert 0 < price < 2 * 10**16
    assert escrow.credit(NATIVE, pool) - before == price       # the pool's to withdraw
    assert released["data"]["refunded"] == str(2 * 10**16 - price)


def test_a_source_over_the_class_size_limit_fails_before_it_is_downloaded(ports, api, small,
                                                                            tmp_path):
    from chalicelib.jobs import attempts
    from chalicelib.jobs import lifecycle as jobs
    from chalicelib.models import Manifest
    from media_worker import planning
    limited = ports.catalog.job_class("ffmpeg_hls").model_copy(update={"max_input_bytes": 1000})
    catalog = ports.catalog.model_copy(update={"job_classes": {
        **ports.catalog.job_classes, "ffmpeg_hls": limited}})
    held = dataclasses.replace(ports, queues=RecordingQueues(), catalog=catalog)
    slot = api.upload(small)
    job, _ = jobs.accept(held, Manifest(kind="ffmpeg_hls", input_uri=slot["input_uri"]),
                         job_id=f"job-{uuid.uuid4().hex[:16]}", source="http")
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    with pytest.raises(Exception) as refused:
        planning.plan_job(held, running, tmp_path, "pool:media")
    assert not (tmp_path / "source").exists()
    failed = attempts.fail(held, running, 1, refused.value)
    assert (failed.state, failed.reason) == ("failed", "input_too_large")
    assert held.tasks.list(job.job_id) == []


def test_a_re_planned_job_drives_tasks_whose_messages_are_gone(ports, api, small, tmp_path):
    """The sweeper retries a transcode whose attempt went quiet; the new plan finds one
    task running on a vanished worker and one never dispatched, and finishes both."""
    from chalicelib.media import tasks as transcode
    job, tasks = planned_job(ports, api, small, tmp_path)       # no task message was sent
    stranded = next(t for t in tasks if t.kind == "video")
    assert transcode.start(ports, job.job_id, stranded.task_id, 1, "pool:media",
                           redelivered=False)                    # then that worker vanished
    stored = ports.store.get(job.job_id)
    assert transcode.record_plan(ports, stored, stored.plan, tasks) is not None
    final = wait_for(api, job.job_id, timeout=120)
    assert final["state"] == "settled", timeline(api, job.job_id)
    assert ports.tasks.get(job.job_id, stranded.task_id).attempt == 2
    assert all(ports.tasks.get(job.job_id, t.task_id).attempt == 1
               for t in tasks if t.task_id != stranded.task_id)


def test_a_segments_renditions_come_from_one_run_and_a_failed_one_is_redone_alone(
        ports, api, media_dir, tmp_path):
    """The plan sends one message per segment naming all its renditions (the audio task
    alone); the worker encodes them in one FFmpeg run; each is checked on its own, from the
    checks queue; a rendition whose check fails goes out again alone."""
    from chalicelib.aws.blobs import S3Uri
    from media_worker import handler

    held = dataclasses.replace(ports, queues=RecordingQueues())
    queues = held.queues
    clip = clips.make_gop_clip(media_dir / "own-ladder.mp4", seconds=7.5, gop=100, width=640,
                               height=480, fps=25)              # two segments, two rungs
    job, tasks = planned_job(ports, api, clip, tmp_path, held=held)
    renditions = [r["name"] for r in job.plan.renditions]
    assert len(renditions) >= 2 and len(job.plan.segments) == 2
    sent = [m for q, m in queues.sent if q == "segments"]
    assert sorted((m["type"], tuple(sorted(t["task_id"] for t in m["tasks"]))) for m in sent) \
        == sorted([("tasks", tuple(sorted(f"{r}-{i:05d}" for r in renditions))) for i in (0, 1)]
                  + [("tasks", ("audio",))])

    # Segment 0's renditions, encoded together; one of them tampered with before its check.
    first = next(m for m in sent if m["tasks"][0]["task_id"].endswith("-00000"))
    queues.sent.remove(("segments", first))
    (tmp_path / "encode").mkdir()
    handler.SEGMENT_WORK["tasks"](held, first, tmp_path / "encode", False)
    victim = held.tasks.get(job.job_id, first["tasks"][-1]["task_id"])
    [output] = victim.outputs
    original = ports.blobs.read(S3Uri.parse(output.uri), 1 << 30)
    ports.blobs.put(S3Uri.parse(output.uri), original[:len(original) // 2 // 188 * 188])
    checks = [m for q, m in queues.sent if q == "checks"]
    assert sorted(m["task_id"] for m in checks) == sorted(t["task_id"] for t in first["tasks"])
    for message in checks:
        queues.sent.remove(("checks", message))
        handler.SEGMENT_WORK["check"](held, message, tmp_path / "encode", False)
    retry = [m for q, m in queues.sent if q == "segments" and m["tasks"][0]["attempt"] == 2]
    assert [m["tasks"] for m in retry] == [[{"task_id": victim.task_id, "attempt": 2}]]

    drive_in_process(held)                      # the rest, the retry among them
    events = api.events(job.job_id)["events"]
    submitted = {(e["task"], e["data"]["attempt"]): e["data"] for e in events
                 if e["type"] == "segment.submitted"}
    together = [submitted[f"{r}-00000", 1] for r in renditions]
    assert {d["renditions_in_run"] for d in together} == {len(renditions)}
    assert all(d["cpu_s"] > 0 and d["ffmpeg"] != "unknown" for d in together)
    assert submitted[victim.task_id, 2]["renditions_in_run"] == 1
    verified = [e for e in events if e["type"] == "segment.verified"]
    assert sorted(e["task"] for e in verified) == sorted(t.task_id for t in tasks)
    assert all(e["data"]["measured"]["check_cpu_s"] >= 0 for e in verified)
    assert [e["task"] for e in events if e["type"] == "segment.rejected"] == [victim.task_id]
    assert {t.task_id: t.attempt for t in ports.tasks.list(job.job_id)} == {
        t.task_id: 2 if t.task_id == victim.task_id else 1 for t in tasks}
