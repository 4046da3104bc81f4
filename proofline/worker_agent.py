"""The marketplace worker agent behind `proofline worker run`.

It registers its identity and claims, then loops: heartbeat (a thread, so a long encode
never lets its lease lapse), lease the next task offered to it, fetch the input through the
lease's presigned URL, run the same segment-encode code as the pool's container Lambda,
upload through the presigned PUT URL, and submit a result signed with its key. Challenge
jobs arrive as ordinary offers: the agent cannot tell them apart and need not.

Stopping (SIGTERM, SIGINT, `--max-jobs` reached): the task in hand is finished and
submitted, a last heartbeat says `accepting: false` so nothing more is routed to it, and it
exits. A task it cannot run is released at once rather than left to its lease's end.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time as clock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import imageio_ffmpeg
import requests

from chalicelib.identity.signing import parse_did
from chalicelib.media.probe import sha256_file
from chalicelib.models import Task, TranscodePlan
from chalicelib.settlement.escrow import result_hash, sign_result

from .client import Api, ApiError


@dataclass
class AgentStats:
    leased: int = 0
    submitted: int = 0
    released: int = 0
    errors: int = 0


def health(accepting: bool = True, queue_depth: int = 0) -> dict:
    """What this machine has free, from the standard library alone."""
    cpus = os.cpu_count() or 1
    free_pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    disk = shutil.disk_usage(tempfile.gettempdir())
    import av
    return {"cpu_free": round(max(0.0, 1 - os.getloadavg()[0] / cpus), 3),
            "memory_free_gb": round(free_pages * page / 2**30, 2),
            "disk_free_gb": round(disk.free / 2**30, 2), "queue_depth": queue_depth,
            "versions": {"pyav": av.__version__, "ffmpeg": _ffmpeg_version()},
            "accepting": accepting}


def _ffmpeg_version() -> str:

    try:
        out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True,
                             text=True, timeout=10).stdout
        return out.split()[2] if out.startswith("ffmpeg version") else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


@dataclass
class Agent:
    api: Api
    account: object                   # eth-account LocalAccount
    did: str
    claims: dict
    heartbeat_every_s: float = 20.0
    poll_s: float = 2.0
    max_jobs: int | None = None
    max_tasks: int = 8                # renditions of one segment taken in one lease
    log: Callable[[str], None] = print
    stats: AgentStats = field(default_factory=AgentStats)

    def __post_init__(self):
        self.chain_id = parse_did(self.did)[0]
        # The agent reads its own record, signed in as itself.
        self.api = Api(self.api.base_url, self.api.timeout, reader=(self.account, self.did))
        self._stop = threading.Event()
        self._models: dict[str, object] = {}          # model id → loaded model class
        self._health = health()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> AgentStats:
        self.register()
        beating = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self.heartbeat()
        beating.start()
        try:
            while not self._stop.is_set():
                if self.max_jobs is not None and self.stats.submitted >= self.max_jobs:
                    break
                lease = self.lease()
                if lease is None:
                    self._stop.wait(self.poll_s)
                elif lease.get("kind") == "countersign":
                    self.countersign(lease)
                elif lease.get("kind") == "job":
                    self.infer(lease)
                else:
                    self.work(lease)
        finally:
            self._stop.set()
            self._safely(lambda: self.heartbeat(accepting=False))
        return self.stats

    def stop(self, *_) -> None:
        """Finish the task in hand, then leave (a signal handler)."""
        if not self._stop.is_set():
            self.log("stopping: finishing the task in hand, taking no more")
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- calls ---------------------------------------------------------------------------
    def _signed(self, action: str, body: dict) -> dict[str, str]:
        return self.api.sign(self.account, self.did, action, body)

    def register(self) -> dict:
        body = {"did": self.did, "claims": self.claims}
        try:
            worker = self.api.register_worker(body, self._signed("register", body))
            self.log(f"registered {self.did}")
        except ApiError as error:
            if error.reason != "worker_exists":
                raise
            worker = self.api.worker(self.did)
            self.log(f"registered already: {self.did}")
        for job_class, challenge in worker.get("challenges", {}).items():
            self.log(f"challenge for {job_class}: {challenge['state']}"
                     + (f" ({challenge['job_id']})" if challenge.get("job_id") else ""))
        return worker

    def heartbeat(self, accepting: bool = True) -> dict | None:
        self._health = health(accepting=accepting)
        self._health["models_loaded"] = self.models_loaded()
        return self._send_heartbeat()

    def _send_heartbeat(self) -> dict | None:
        """None when the control plane says it heard from this worker a moment ago about
        the same thing (429): the last heartbeat stands."""
        body = {"did": self.did, "health": self._health}
        try:
            return self.api.heartbeat(self.did, body, self._signed("heartbeat", body))
        except ApiError as error:
            if error.reason != "rate_limited":
                raise
            return None

    def lease(self) -> dict | None:
        body = {"did": self.did, "max_tasks": self.max_tasks}
        try:
            return self.api.lease(self.did, body, self._signed("lease", body))
        except (ApiError, requests.RequestException) as error:
            self.stats.errors += 1
            self.log(f"lease failed: {error}")
            return None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every_s):
            self._safely(self.heartbeat)

    def _safely(self, call) -> None:
        try:
            call()
        except (ApiError, requests.RequestException) as error:
            self.stats.errors += 1
            self.log(f"{getattr(call, '__name__', 'call')} failed: {error}")

    # -- one segment's tasks -------------------------------------------------------------
    def work(self, lease: dict) -> None:
        """A task's lease, or a segment's (its renditions, one input): fetch the input once,
        encode, upload each task's outputs to its slot and submit each task's signed result.
        Whatever fails here gives every task of the lease back."""
        entries = lease["tasks"] if lease.get("kind") == "segment" else [lease]
        refs = [entry["task_ref"] for entry in entries]
        self.stats.leased += len(entries)
        self.log(f"leased {', '.join(refs)} (attempt {entries[0]['attempt']}, until "
                 f"{entries[0]['lease_expires_at']})")
        try:
            with tempfile.TemporaryDirectory(prefix="proofline-worker-") as tmp:
                workdir = Path(tmp)
                source = workdir / ("input" + Path(entries[0]["task"]["input_uri"]).suffix)
                _download(lease["input"]["url"], source)
                plan = TranscodePlan.model_validate(lease["plan"])
                # A lease does not say how many tries the task has (that would tell a
                # challenge from a client's task); the encoder does not need it.
                tasks = [Task.model_validate({"max_attempts": 1, **entry["task"]})
                         for entry in entries]
                made = self.encode_segment(plan, tasks, source, workdir / "out")
                results = [(entry, [self._upload(slot, workdir / "out" / slot["name"])
                                    for slot in entry["outputs"]], made[task.task_id][1])
                           for entry, task in zip(entries, tasks)]
        except Exception as error:  # noqa: BLE001 - anything local: give the tasks back
            self.stats.errors += 1
            self.log(f"{', '.join(refs)} failed here ({error!r}); releasing")
            for ref in refs:
                body = {"did": self.did, "task_ref": ref, "reason": repr(error)[:200]}
                self._safely(lambda: self.api.release(ref, body, self._signed("release", body)))
                self.stats.released += 1
            return
        for entry, outputs, execution in results:
            self.submit(entry, outputs, execution)

    def submit(self, entry: dict, outputs: list[dict], execution: dict) -> None:
        ref = entry["task_ref"]
        body = {"did": self.did, "task_ref": ref, "attempt": entry["attempt"],
                "outputs": outputs, "execution": execution}
        try:
            self.api.submit_result(ref, body, self._signed("result", body))
        except ApiError as error:
            self.stats.errors += 1
            self.log(f"{ref} result refused: {error.reason}: {error}")
            return
        self.stats.submitted += 1
        self.log(f"submitted {ref}: {outputs[0]['sha256']}")

    # -- a whole inference job ------------------------------------------------------------
    def infer(self, lease: dict) -> None:
        """Run the job's model, the same class the pool runs (`gpu_functions.inference`),
        loaded once and kept warm; upload and submit the signed result."""
        self.stats.leased += 1
        job_id = lease["job_id"]
        self.log(f"leased job {job_id} ({lease['job_class']}, attempt {lease['attempt']})")
        try:
            body, execution = self.run_model(lease)
            response = requests.put(lease["output"]["url"], data=body, timeout=300)
            response.raise_for_status()
        except Exception as error:  # noqa: BLE001 - anything local: give the job back
            self.stats.errors += 1
            self.log(f"job {job_id} failed here ({error!r}); releasing it")
            release = {"did": self.did, "job_id": job_id, "reason": repr(error)[:200]}
            self._safely(lambda: self.api.release_job(job_id, release,
                                                      self._signed("release", release)))
            self.stats.released += 1
            return
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        result = {"did": self.did, "job_id": job_id, "attempt": lease["attempt"],
                  "output": {"name": lease["output"]["name"], "sha256": digest,
                             "size_bytes": len(body)}, "execution": execution}
        if lease.get("escrow"):
            escrow = lease["escrow"]
            result["signature"] = "0x" + sign_result(
                self.account, escrow["domain"], bytes.fromhex(escrow["job_key"][2:]),
                result_hash([digest])).hex()
        try:
            self.api.submit_job_result(job_id, result, self._signed("result", result))
        except ApiError as error:
            self.stats.errors += 1
            self.log(f"job {job_id} result refused: {error.reason}: {error}")
            return
        self.stats.submitted += 1
        self.log(f"submitted job {job_id}: {digest}")

    def run_model(self, lease: dict) -> tuple[bytes, dict]:
        inputs, started = lease["inputs"], clock.perf_counter()
        if lease["job_class"] == "embed_batch":
            out = self._model("embed_batch").embed.local(inputs["texts"])
            body = out["npy"]
            extra = {"count": out.get("count", len(inputs["texts"])), "dim": out.get("dim")}
        else:
            out = self._model("generate_small").generate.local(
                inputs["prompt"], inputs["max_tokens"], inputs["seed"])
            body = json.dumps({k: out[k] for k in ("text", "tokens", "token_ids", "model",
                                                    "seed", "greedy")},
                              ensure_ascii=False).encode("utf-8")
            extra = {"tokens": out["tokens"]}
        return body, {"model": out["model"], "model_s": round(clock.perf_counter() - started, 4),
                      "cold_start_s": out.get("cold_start_s"),
                      "warm": out.get("cold_start_s") is None, **extra}

    def models_loaded(self) -> list[str]:
        """Model ids this agent holds in memory: the router prefers warm workers."""
        return sorted(self._models)

    def _model(self, kind: str):
        """The job class's model, loaded on first use and kept (by model id)."""
        from gpu_functions import inference
        model_id = inference.EMBED_MODEL if kind == "embed_batch" else inference.TINY_GENERATOR
        if model_id not in self._models:
            self._models[model_id] = (inference.Embedder() if kind == "embed_batch"
                                      else inference.Generator(model_id=model_id))
        return self._models[model_id]

    def countersign(self, request: dict) -> None:
        """Sign the escrow's result hash for a verified job this worker is paid for, once
        the package is seen to hold the segments it made."""
        job_id = request["job_id"]
        package = requests.get(request["package_url"], timeout=60)
        package.raise_for_status()
        listing = package.json()
        listed = {f["sha256"] for f in listing.get("files", [])}
        # An HLS package keeps each segment's bytes; an MP4 joins them into one file.
        hls = str(listing.get("entry", "")).endswith(".m3u8")
        missing = set(request["your_segments"]) - listed if hls else set()
        if (result_hash(request["outputs"]).hex() != request["result_hash"].removeprefix("0x")
                or missing):
            self.stats.errors += 1
            self.log(f"not countersigning {job_id}: the package does not hold {sorted(missing)} "
                     "or the hash does not match")
            return
        signature = sign_result(self.account, request["domain"],
                                bytes.fromhex(request["job_key"][2:]),
                                bytes.fromhex(request["result_hash"][2:]))
        body = {"did": self.did, "job_id": job_id, "signature": "0x" + signature.hex()}
        try:
            self.api.countersign(job_id, body, self._signed("countersign", body))
        except ApiError as error:
            self.stats.errors += 1
            self.log(f"countersignature for {job_id} refused: {error.reason}: {error}")
            return
        self.log(f"countersigned {job_id}: {request['result_hash']}")

    def encode_segment(self, plan, tasks: list, source: Path,
                       out: Path) -> dict[str, tuple[list[Path], dict]]:
        """Every task's files from one decode of the segment, as the pool's worker makes
        them. An agent that changes `encode` (one task) has it called for each instead."""
        if type(self).encode is not Agent.encode:
            return {task.task_id: self.encode(plan, task, source, out) for task in tasks}
        from media_worker.transcode import encode_renditions
        return encode_renditions(plan, tasks, source, out)

    def encode(self, plan, task, source: Path, out: Path) -> tuple[list[Path], dict]:
        from media_worker.transcode import encode_segment
        return encode_segment(plan, task, source, out)

    def _upload(self, slot: dict, path: Path) -> dict:
        with open(path, "rb") as body:
            response = requests.put(slot["url"], data=body, timeout=300)
        response.raise_for_status()
        return {"name": slot["name"], "sha256": sha256_file(path),
                "size_bytes": path.stat().st_size}


def _download(url: str, target: Path) -> None:
    with requests.get(url, stream=True, timeout=300) as response:
        response.raise_for_status()
        with open(target, "wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
