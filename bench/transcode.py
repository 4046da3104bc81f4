"""One 1080p30 transcode to the `hls-abr` ladder through the local stack, against the one
plain ffmpeg command that makes the same ladder with the same encoder settings on the same
machine; the job's own events say where the pipeline's time went.

The source has a keyframe every 4 s, so it is cut by stream copy on the profile's segment
boundaries. PROOFLINE_BENCH_SECONDS sets its length (default 60).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import boto3
import imageio_ffmpeg

from bench import event_at, operator_api, settled_at
from bench.alone import Alone, encode_alone, source_segments, verify_directly
from chalicelib.media import ffmpeg_args, profiles
from chalicelib.telemetry import cpu_seconds
from media_worker import segments
from proofline import clips
from proofline.client import TERMINAL, Api
from proofline.devstack import DevStack
from proofline.transcode_cli import upload_source

PROFILE = "hls-abr"
WIDTH, HEIGHT, FPS = 1920, 1080, 30
GOP = 120                      # 4 s at 30 fps: the profile's segment length
RAW_TIMEOUT_S = 600
SETTLE_TIMEOUT_S = 1200
ROOT = Path(__file__).resolve().parent.parent


def run() -> dict[str, float]:
    """Measure in a process of its own: a second DevStack cannot start in a process that
    already ran one (chalice's local server rebinds the app's class), and `python -m bench`
    runs probe_jobs first."""
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        results = Path(tmp) / "results.json"
        subprocess.run([sys.executable, "-m", "bench.transcode", str(results)], cwd=ROOT,
                       check=True)
        return json.loads(results.read_text())


def measure() -> dict[str, float]:
    seconds = float(os.environ.get("PROOFLINE_BENCH_SECONDS", "60"))
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        tmp = Path(tmp)
        source = clips.make_gop_clip(tmp / "source.mp4", seconds=seconds, gop=GOP, width=WIDTH,
                                     height=HEIGHT, fps=FPS, audio=True)
        raw_before = _raw_ffmpeg_s(source, tmp / "raw-before")
        stack = DevStack(tmp / "state", visibility_cap=30, schedule_every_s=3600, pool_workers=2)
        try:                        # a start that fails half way leaves servers to stop
            stack.start()
            measured = _pipeline(stack, source, tmp)
        finally:
            stack.stop()
        raw_after = _raw_ffmpeg_s(source, tmp / "raw-after")
    # The faster of the two raw runs: one slowed by something else on the machine (a cold
    # page cache, a neighbour; a first run here has taken 40 s where later ones took 29 s)
    # would flatter the pipeline.
    raw, raw_cpu = min(raw_before, raw_after)
    print(f"raw ffmpeg: {raw_before[0]:.1f} s ({raw_before[1]:.1f} CPU-s) before the pipeline, "
          f"{raw_after[0]:.1f} s ({raw_after[1]:.1f} CPU-s) after")
    wall = measured.pop("transcode_pipeline_wall_s")
    critical = measured.pop("critical_path_s")
    encode_cpu = measured.pop("encode_cpu_s")
    encode_alone_cpu = measured.pop("encode_alone_cpu_s")
    run_cpu = measured["stack_process_cpu_s"] + measured["worker_processes_cpu_s"]
    # The raw command keeps every core busy, and so does the pipeline's stack here (moto,
    # the API and the pump share the cores with the encodes, as they would not on AWS):
    # with every core busy every moment, a run's wall is at least its CPU over the cores.
    # These floors say how much of the gap is CPU that this machine has to find room for.
    cores = os.cpu_count() or 1
    floors = {"transcode_wall_floor_over_raw": round(run_cpu / cores / raw, 3),
              "transcode_wall_floor_encodes_only_over_raw": round(encode_cpu / cores / raw, 3)}
    print(f"the least wall this run's CPU allows on {cores} cores: {run_cpu / cores:.1f} s "
          f"({floors['transcode_wall_floor_over_raw']:.2f} x raw); with nothing but the "
          f"encodes: {encode_cpu / cores:.1f} s "
          f"({floors['transcode_wall_floor_encodes_only_over_raw']:.2f} x raw)")
    return {
        "transcode_source_s": seconds,
        "transcode_pipeline_wall_s": round(wall, 1),
        "transcode_raw_ffmpeg_wall_s": round(raw, 1),
        "transcode_raw_ffmpeg_cpu_s": round(raw_cpu, 1),
        "transcode_wall_over_raw_ffmpeg": round(wall / raw, 2),
        "critical_path_s": round(critical, 2),
        "critical_path_over_raw": round(critical / raw, 3),
        "encode_cpu_s": round(encode_cpu, 1),
        "encode_cpu_over_raw_cpu": round(encode_cpu / raw_cpu, 3),
        "encode_alone_cpu_over_raw_cpu": round(encode_alone_cpu / raw_cpu, 3),
        "ffmpeg_run_starts_cpu_over_raw_cpu": round(
            measured.pop("ffmpeg_run_starts_cpu_s") / raw_cpu, 3),
        **floors,
        **measured,
    }


def _raw_ffmpeg_s(source: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the one plain command, its CPU time read from the
    kernel's account of that child alone (`wait4`), not from this process's children
    at large, which include the stack's worker processes as they exit."""
    info = segments.inspect_source(source)
    profile = profiles.get_profile(PROFILE)
    planned = profiles.ladder(profile, info.width, info.height, info.rotation)
    fps = profiles.output_fps(profile, Fraction(info.frame_rate))
    out.mkdir()
    args = ffmpeg_args.raw_ladder_args(profile, planned, fps=fps, input_path=source,
                                       output_dir=out, audio=info.has_audio)
    started = time.perf_counter()
    child = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the raw ffmpeg command exited with {child.returncode}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def _pipeline(stack: DevStack, source: Path, tmp: Path) -> dict[str, float]:
    api = operator_api(stack)
    session = boto3.session.Session()
    own = {name: session.client(name, endpoint_url=stack.info.aws_endpoint,
                                region_name=stack.info.region) for name in ("dynamodb", "s3")}
    table = stack.info.environment()["JOBS_TABLE"]
    # A tiny transcode first, so both worker processes have started and imported ffmpeg's
    # and PyAV's side: a cold start is not what this measures.
    warm = clips.make_gop_clip(tmp / "warm.mp4", seconds=2.0, gop=50, width=320, height=240,
                               fps=25)
    _wait(api, own["dynamodb"], table, _submit(api, api.upload(warm)))

    # The end is the `settled` event's own time, on the same clock, not when polling saw it.
    workers = stack.pump.worker_pids()
    cpu_before = cpu_seconds(), _processes_cpu_s(workers)
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    # As `proofline transcode submit` sends it: cut here while the source uploads, unless
    # PROOFLINE_BENCH_CUT=stack (the planner fetches and cuts it).
    here = os.environ.get("PROOFLINE_BENCH_CUT", "client") != "stack"
    slot, listing = upload_source(api, source, PROFILE, tmp / "cut" if here else None)
    uploaded_s = time.perf_counter() - started
    job = _wait(api, own["dynamodb"], table, _submit(api, slot, listing))
    # This process runs moto, the API, the event pump and the bench's own polling; the
    # pool's processes run every encode, check, plan and assembly.
    stack_cpu, workers_cpu = (cpu_seconds() - cpu_before[0],
                              _processes_cpu_s(workers) - cpu_before[1])
    events = api.events(job["job_id"])["events"]
    wall = (settled_at(events) - started_at).total_seconds()

    sources = source_segments(own["s3"], job, tmp / "sources")
    direct = verify_directly(api, job, sources, tmp / "verify")
    alone = encode_alone(job, sources, tmp / "alone")
    print(f"CPU while the job ran: {stack_cpu:.1f} s in the stack's process (moto, API, pump), "
          f"{workers_cpu:.1f} s in the pool's {len(workers)} worker processes")
    return {"transcode_pipeline_wall_s": wall, "stack_process_cpu_s": round(stack_cpu, 1),
            "worker_processes_cpu_s": round(workers_cpu, 1),
            **_from_events(job, events, started_at, uploaded_s, direct, alone)}


def _processes_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes and the children they waited for (their FFmpeg runs),
    from /proc: user, system and the children's user and system."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _submit(api: Api, slot: dict, listing: list[dict] | None = None) -> str:
    job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                         "input_hash": slot["input_hash"], "profile": PROFILE,
                         **({"segments": listing} if listing else {})},
                        idempotency_key=str(uuid.uuid4()))
    return job["job_id"]


def _wait(api: Api, own, table: str, job_id: str) -> dict:
    """Watch the job with a DynamoDB client of the bench's own, off the API's request log."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        item = own.get_item(TableName=table, Key={"pk": {"S": f"JOB#{job_id}"},
                                                  "sk": {"S": "JOB"}},
                            ProjectionExpression="#s", ExpressionAttributeNames={"#s": "state"},
                            ConsistentRead=True).get("Item")
        state = item["state"]["S"] if item else "missing"
        if state == "settled":
            return api.job(job_id)
        if state in TERMINAL:
            raise RuntimeError(f"benchmark transcode {job_id} ended {state}: "
                               f"{api.job(job_id).get('reason')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark transcode {job_id} not settled after "
                               f"{SETTLE_TIMEOUT_S}s (state {state})")
        time.sleep(0.2)


def _from_events(job: dict, events: list[dict], started_at: datetime, uploaded_s: float,
                 checked: dict[tuple[str, int], dict[str, float]],
                 alone: Alone) -> dict[str, float]:
    plan = job["plan"]
    direct = {key: c["full"] for key, c in checked.items()}
    direct_cpu = sum(c["full_cpu"] for c in checked.values())
    durations = {p["index"]: p["duration_s"] for p in plan["segments"]}
    first = {e["type"]: event_at(e) for e in reversed(events) if not e.get("task")}  # earliest wins
    planned_at = first["segments.planned"]
    by_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if e.get("task"):
            by_task[e["task"]][e["type"]].append(e)
    retries = Counter(e["type"] for e in events
                      if e["type"] in ("segment.failed", "segment.rejected", "segment.lost"))
    # CPU time as each worker process measured it (its own and its FFmpeg children's): every
    # attempt's encode, and every check at the depth the policy chose for the pool.
    runs = [e["data"] for e in events if e["type"] == "segment.submitted"]
    encode_cpu = sum(d.get("cpu_s", 0.0) for d in runs)
    video_encode_cpu = sum(d.get("cpu_s", 0.0) for d in runs if d.get("rendition"))
    verdicts = [e["data"] for e in events if e["type"] in ("segment.verified", "segment.rejected")]
    check_cpu = sum(d["measured"].get("check_cpu_s", 0.0) for d in verdicts)
    # Each segment's slowest check, timed alone at the depth the pipeline's audit drew for it
    # (the checks of one segment's renditions run side by side, one Lambda each).
    check_wall: dict[int, float] = defaultdict(float)
    for d in verdicts:
        if d.get("rendition"):
            depth = "full" if d["measured"].get("audited") else "light"
            check_wall[d["index"]] = max(check_wall[d["index"]],
                                         checked[d["rendition"], d["index"]][depth])

    waits, encodes, checks, spans, unqueued = [], [], [], [], []
    media_s = video_checks_s = 0.0
    for seen in by_task.values():
        start, submitted = seen["segment.started"][0], seen["segment.submitted"][-1]
        verified = seen["segment.verified"][-1]
        waits.append((event_at(start) - planned_at).total_seconds())
        encodes.append((event_at(submitted) - event_at(seen["segment.started"][-1])).total_seconds())
        # submitted → verified is an upper bound on verification: it also holds the check
        # message's wait behind every encode queued before it on the segments queue.
        checks.append((event_at(verified) - event_at(submitted)).total_seconds())
        spans.append((event_at(verified) - event_at(start)).total_seconds())
        rendition, index = verified["data"].get("rendition"), verified["data"]["index"]
        if rendition:                   # the audio task's check is a playlist parse
            media_s += durations[index]
            video_checks_s += checks[-1]
        unqueued.append((encodes[-1] + direct.get((rendition, index), 0.0), verified["task"]))
    last_verified = max(event_at(s["segment.verified"][-1]) for s in by_task.values())
    first_verified = min(event_at(s["segment.verified"][-1]) for s in by_task.values())
    last_submitted = max(event_at(s["segment.submitted"][-1]) for s in by_task.values())
    first_started = min(event_at(s["segment.started"][0]) for s in by_task.values())
    settled = settled_at(events)
    package = next(e for e in events if e["type"] == "validation.passed")["data"]
    # The assembly's own execution record (the job's `execution.completed`, not a task's).
    assembly = next(e["data"] for e in reversed(events)
                    if e["type"] == "execution.completed" and "assembly_s" in e["data"])
    # One Lambda per segment: the plan, then every segment at once (the slowest decides: its
    # renditions' encode alone on an idle machine, then its slowest rendition's check, the
    # checks running side by side), then the assembly.
    plan_s = (planned_at - first["execution.started"]).total_seconds()
    slowest = max(alone.seconds, key=lambda i: alone.seconds[i] + check_wall[i])
    critical = {f"plan ({plan['split']['method']}: {plan['split'].get('seconds')})": plan_s,
                f"slowest segment's encode alone (segment {slowest})": alone.seconds[slowest],
                "its slowest rendition's check (at its drawn depth, alone)": check_wall[slowest],
                "assembly": assembly["assembly_s"]}
    print("critical path with one Lambda per segment:")
    for name, value in critical.items():
        print(f"  {name}: {value:.2f} s")
    breakdown = {
        "upload_s (and the cut, side by side)": uploaded_s,
        "submit_to_plan_started_s":
            (first["execution.started"] - started_at).total_seconds() - uploaded_s,
        "plan_split_s": (planned_at - first["execution.started"]).total_seconds(),
        "plan steps (s)": plan["split"].get("seconds"),
        "first_task_wait_s": (first_started - planned_at).total_seconds(),
        "tasks_wall_s (first started → last verified)":
            (last_verified - first_started).total_seconds(),
        "first_check_done_at_s (after first start)":
            (first_verified - first_started).total_seconds(),
        "encodes_done_at_s (after first start)": (last_submitted - first_started).total_seconds(),
        "encode_worker_s (sum started→submitted)": sum(encodes),
        "encode_p50_s": statistics.median(encodes),
        "task_wait_for_worker_p50_s (planned→started)": statistics.median(waits),
        "submitted_to_verified_p50_s (queue + check)": statistics.median(checks),
        "verify_worker_s_direct (sum, video)": sum(direct.values()),
        "verify_direct_max_s": max(direct.values()),
        "slowest task (encode + direct verify)": max(unqueued)[1],
        "last_verified_to_settled_s (assembly)": (settled - last_verified).total_seconds(),
        "assembly_s (execution record)": assembly["assembly_s"],
        # An HLS package is not decoded again: it relies on its segments' verdicts.
        "package_decode_wall_s": package.get("measured", {}).get("decode_wall_s", 0.0),
        "retries": dict(retries),
        "segments_encoded_alone_s (sum, one run each)": sum(alone.seconds.values()),
        "segments_encoded_alone_cpu_s": alone.cpu_s,
        "cpu_s of an FFmpeg run over two frames (its start)": alone.run_cpu_s,
        "encode_cpu_s (all attempts, as the workers measured)": encode_cpu,
        "check_cpu_s (the pool's depth)": check_cpu,
        "verify_cpu_s_direct (full depth, video)": direct_cpu,
        "checks audited in content": sum(1 for d in verdicts if d["measured"].get("audited")),
        "checks": len(verdicts),
    }
    print("where the pipeline's time went:")
    for name, value in breakdown.items():
        print(f"  {name}: {round(value, 2) if isinstance(value, float) else value}")
    if len(direct) != sum(1 for seen in by_task.values()
                          if seen["segment.verified"][-1]["data"].get("rendition")):
        raise RuntimeError(f"{len(direct)} segments in the package, not one per video task")
    return {
        "transcode_tasks": len(by_task),
        # started → verified holds the check's wait on the segments queue, which unlimited
        # workers would not have; the next figure leaves it out (but its encode still shared
        # the two cores with the other worker).
        "segment_critical_path_s": round(max(spans), 2),
        "segment_encode_plus_verify_max_s": round(max(unqueued)[0], 2),
        "verify_realtime_factor": round(media_s / sum(direct.values()), 2),
        "verify_realtime_factor_with_queueing": round(media_s / video_checks_s, 2),
        "verify_segment_s_p50": round(statistics.median(direct.values()), 3),
        "package_assembly_s": round(assembly["assembly_s"], 2),
        "critical_path_s": sum(critical.values()),
        "encode_cpu_s": encode_cpu,
        "segment_task_alone_max_s": round(max(alone.seconds.values()), 2),
        # The same encodes alone on the idle machine, the audio as the pipeline ran it: what
        # the split costs without two worker processes sharing the cores.
        "encode_alone_cpu_s": alone.cpu_s + encode_cpu - video_encode_cpu,
        "ffmpeg_run_start_cpu_s": round(alone.run_cpu_s, 3),
        # one run per segment: what starting them costs, all together
        "ffmpeg_run_starts_cpu_s": alone.run_cpu_s * len(alone.seconds),
        "verify_cpu_over_encode_cpu": round(check_cpu / encode_cpu, 3),
        # What a new worker's output costs to check in full, against the encodes it replaced.
        "verify_full_depth_cpu_over_encode_cpu": round(direct_cpu / video_encode_cpu, 3),
    }


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(measure()))
