"""Adversaries through the real lease API: marketplace agents (`proofline.worker_agent.Agent`)
that pass their challenge honestly, then hand in one cheat of the catalogue for every client
task or job they lease, signed and submitted like honest work.

`campaign` runs one adversary per cheat against a running stack: each is verified, then, one
at a time (the others say they take no work, so each job meets exactly one cheat), a client
job is submitted that it wins on price. The outcome of each job says whether every cheated
result was caught, whether any cheated byte reached the client, and whether the job was
finished by someone else. The tests run it once per cheat; `python -m bench verify` three
times per cheat.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
from eth_account import Account

# Imported here, once, before any agent thread: transformers resolves its names lazily, and
# two threads doing so at once can fail ("cannot import name AutoModelForCausalLM").
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

from bench import cheats
from chalicelib.aws.workerstore import WorkerStore
from chalicelib.identity.signing import did_for
from chalicelib.media import ffmpeg_args, profiles
from chalicelib.media.probe import sha256_file
from gpu_functions import inference
from media_worker.ffmpeg import run_ffmpeg
from proofline import clips
from proofline.client import TERMINAL, Api, ApiError
from proofline.worker_agent import Agent, health

VIDEO = {c.name: c for c in cheats.VIDEO_CHEATS}
EMBED_CHEATS = ("embed_5pct_rows_perturbed_new_worker", "embed_perturbed_weights")
GENERATE_CHEATS = ("generate_sampled_not_greedy", "generate_truncated", "generate_other_model")
LEASE_PATH_CHEATS = (*VIDEO, *EMBED_CHEATS, *GENERATE_CHEATS)
TEXTS = [f"Sentence {i} about {topic}." for i, topic in enumerate(
    ("lighthouses", "rivers", "verifiable compute", "markets", "snow", "libraries", "ships",
     "bridges", "orchards", "radio", "glaciers", "trains", "bees", "clocks", "maps", "salt",
     "kites", "wells", "lanterns", "owls"))]
CANDIDATES_MAX_AGE_S = WorkerStore.CANDIDATES_MAX_AGE_S
WAVE = 4                          # adversaries taking their challenges at once
PROMPTS = ("Describe a lighthouse.", "Explain verifiable compute.", "Tell a story about a ship.")


def job_class_of(cheat: str) -> str:
    if cheat in VIDEO:
        return "ffmpeg_hls"
    return "embed_batch" if cheat in EMBED_CHEATS else "generate_small"


def challenge_passed(agent: Agent, job_class: str) -> bool:
    """What an informed cheat can know: its own record says its challenge has passed (a
    challenge looks like any client's job, so this is how it knows when to start cheating)."""
    challenge = agent.api.worker(agent.did).get("challenges", {}).get(job_class) or {}
    return challenge.get("state") == "passed"


def perturbed(model: torch.nn.Module, scale: float, reinit: bool = False) -> torch.nn.Module:
    """The same architecture with other weights: each parameter nudged by `scale` of its
    spread, or drawn afresh."""
    with torch.no_grad():
        for parameter in model.parameters():
            if reinit:
                parameter.normal_(0, 0.02)
            else:
                parameter.add_(torch.randn_like(parameter) * scale * parameter.std())
    return model


def write_y4m(frames: list[np.ndarray], path: Path, rate: Fraction) -> Path:
    """yuv420p frames (planes stacked, as `cheats.Frames`) as raw video FFmpeg can read."""
    height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def decode(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or 25)
        return [f.to_ndarray(format="yuv420p") for f in container.decode(stream)], rate


@dataclass
class Adversary(Agent):
    """Honest until its challenge for the class has passed; then `cheat` on everything.
    While not `active` it tells the control plane it takes no work."""
    cheat: str = "another_video"
    seed: str = "0"
    active: bool = True
    handed_in: set[str] = field(default_factory=set)     # digests of cheated results
    _cheating: dict[str, bool] = field(default_factory=dict)

    def heartbeat(self, accepting: bool = True, *, say: bool = False) -> dict:
        if not (self.active or say):
            return {}                 # dormant: silent, so a campaign's idle agents cost nothing
        self._health = {**health(accepting=accepting and self.active),
                        "models_loaded": self.models_loaded()}
        if self.claims.get("hardware", {}).get("gpu"):
            self._health["gpu_free"] = 1.0           # (it says so: claims are checked by work)
        return self._send_heartbeat() or {}

    def lease(self):
        return super().lease() if self.active else None

    def activate(self, on: bool, *, settle: bool = True) -> None:
        """Take work or not; the router sees it once its cached view of the registry
        renews."""
        self.active = on
        self.heartbeat(say=True)
        if settle:
            time.sleep(CANDIDATES_MAX_AGE_S + 0.5)

    def cheating(self, job_class: str) -> bool:
        if not self._cheating.get(job_class):
            self._cheating[job_class] = challenge_passed(self, job_class)
        return self._cheating[job_class]

    # -- video: the cheat's frames through the project's own encoder settings ----------------
    def encode(self, plan, task, source: Path, out: Path):
        cheat = VIDEO.get(self.cheat)
        if cheat is None or task.kind != "video" or not self.cheating("ffmpeg_hls"):
            return super().encode(plan, task, source, out)
        rng = random.Random(f"{self.seed}:{task.task_id}")
        frames, rate = decode(source)
        height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
        other_clip = clips.make_clip(out.parent / "other.mp4", seconds=len(frames) / rate + 1,
                                     width=width, height=height, audio=False,
                                     seed_pattern=rng.choice(["smptebars", "rgbtestsrc"]))
        other, _ = decode(other_clip)
        faked = write_y4m(cheat.make(frames, other, rng), out.parent / "faked.y4m", rate)
        # The project's own encoder settings, with the rendition's bitrate or size changed as
        # the cheat needs (off the profile's bounds: this is a cheat, so unvalidated).
        rendition = profiles.PlannedRendition.model_validate(
            next(r for r in plan.renditions if r["name"] == task.rendition))
        rendition = rendition.model_copy(update={
            **{k: max(10, int(getattr(rendition, k) * cheat.bitrate_ratio))
               for k in ("video_bitrate_k", "maxrate_k", "bufsize_k")},
            **({"width": cheat.size[0], "height": cheat.size[1]} if cheat.size else {})})
        target = out / task.rendition / f"seg_{task.index:05d}.ts"
        target.parent.mkdir(parents=True)
        run = run_ffmpeg(ffmpeg_args.video_segment_args(
            profiles.get_profile(plan.profile), rendition, fps=Fraction(plan.fps),
            start_s=task.start_s, input_path=faked, output_path=target), timeout_s=240)
        self.handed_in.add(sha256_file(target))
        return [target], {"exit_code": run.returncode, "wall_s": round(run.wall_s, 3)}

    # -- inference: the honest answer, altered, or another model's ------------------------
    def _model(self, kind: str):
        weights = {"embed_perturbed_weights": "embed_batch",
                   "generate_other_model": "generate_small"}
        if weights.get(self.cheat) != kind or not self.cheating(kind):
            return super()._model(kind)
        if not hasattr(self, "_other_model"):
            other = inference.Embedder() if kind == "embed_batch" else inference.Generator(
                model_id=inference.TINY_GENERATOR)
            if kind == "embed_batch":
                other.embed.local(["warm"])
            else:
                other.generate.local("warm", 2, 0)
            torch.manual_seed(int(self.seed, 16))
            # MiniLM nudged by 5 % of each weight's spread; the two-layer generator's greedy
            # text survives small nudges, so it gets weights drawn afresh.
            perturbed(other.model, 0.05, reinit=kind == "generate_small")
            self._other_model = other
        return self._other_model

    def run_model(self, lease: dict):
        body, execution = super().run_model(lease)
        kind = lease["job_class"]
        if self.cheat not in (*EMBED_CHEATS, *GENERATE_CHEATS) or not self.cheating(kind):
            return body, execution
        rng = random.Random(f"{self.seed}:{lease['job_id']}")
        if self.cheat == "embed_5pct_rows_perturbed_new_worker":
            vectors = np.load(io.BytesIO(body))
            for row in rng.sample(range(len(vectors)), max(1, math.ceil(len(vectors) * 0.05))):
                noisy = vectors[row] + np.random.default_rng(rng.getrandbits(32)).normal(
                    0, 0.05, vectors.shape[1])
                vectors[row] = noisy / np.linalg.norm(noisy)
            buffer = io.BytesIO()
            np.save(buffer, vectors.astype(np.float32), allow_pickle=False)
            body = buffer.getvalue()
        elif self.cheat in ("generate_sampled_not_greedy", "generate_truncated"):
            honest = json.loads(body)
            claimed = dict(honest)
            if self.cheat == "generate_truncated":
                claimed.update(token_ids=honest["token_ids"][:-3], text=honest["text"][:-5])
            else:
                generate = self._model("generate_small").generate.local
                for _ in range(20):         # a sample equal to the greedy text is no cheat
                    sampled = generate(lease["inputs"]["prompt"], lease["inputs"]["max_tokens"],
                                       rng.randrange(1 << 16), greedy=False)
                    if sampled["token_ids"] != honest["token_ids"]:
                        claimed.update(text=sampled["text"], token_ids=sampled["token_ids"])
                        break
            claimed["tokens"] = len(claimed["token_ids"])
            body = json.dumps(claimed, ensure_ascii=False).encode("utf-8")
        elif self.cheat == "generate_other_model":
            honest = super()._model("generate_small").generate.local(
                lease["inputs"]["prompt"], lease["inputs"]["max_tokens"], lease["inputs"]["seed"])
            if json.loads(body)["token_ids"] == honest["token_ids"]:
                return body, execution          # the same text: no cheat, whatever the model
        self.handed_in.add(_digest(body))
        return body, execution


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- a campaign: one adversary per cheat, one client job at a time ---------------------------

@dataclass
class Outcome:
    cheat: str
    adversary: str
    job_id: str
    state: str
    handed_in: int            # cheated results the adversary submitted for this job
    caught: int               # of those, rejected by verification
    delivered: bool           # a cheated byte among what the client received
    finished_by: list[str]    # who made what the client received
    failures_recorded: int    # the adversary's validation failures for the class, after
    reasons: list[str]        # why its results were rejected

    @property
    def held(self) -> bool:
        """The promise: the cheat was tried, every instance caught, none delivered, and the
        job finished by someone else."""
        return (self.state == "settled" and self.handed_in > 0 and self.caught == self.handed_in
                and not self.delivered and self.adversary not in self.finished_by)


def claims(job_class: str, price: str) -> dict:
    models = {"embed_batch": [inference.EMBED_MODEL],
              "generate_small": [inference.TINY_GENERATOR]}.get(job_class, [])
    gpu = {"hardware": {"gpu": "T4", "gpu_memory_gb": 16}} if job_class == "generate_small" else {}
    return {"job_classes": [job_class], "region": "us-east-1",
            "price_per_unit": {job_class: price}, "codecs": ["h264"], "models_cached": models,
            **gpu}


def start(api: Api, chain_id: int, cheat: str, seed: str,
          trace: Callable[[str], None] = lambda _: None) -> tuple[Adversary, threading.Thread]:
    account = Account.create()
    agent = Adversary(api=api, account=account, did=did_for(account.address, chain_id),
                      claims=claims(job_class_of(cheat), "0.0000001"), heartbeat_every_s=1,
                      poll_s=1.0, log=lambda line: trace(f"{cheat}: {line}"), cheat=cheat,
                      seed=seed)
    thread = threading.Thread(target=agent.run, name=f"adversary-{cheat}", daemon=True)
    thread.start()
    return agent, thread


def campaign(api: Api, chain_id: int, names, *, trials: int = 1, workdir: Path | None = None,
             timeout_s: float = 240, log=print) -> list[Outcome]:
    """One adversary per cheat in `names`; each verified, then `trials` client jobs for it
    alone. Returns an outcome per job."""
    seed = uuid.uuid4().hex[:8]
    trace: deque[str] = deque(maxlen=60)       # the agents' own lines, for a failure's message
    adversaries: dict[str, tuple[Adversary, threading.Thread]] = {}
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="proofline-adversary-") as tmp:
        source = clips.make_gop_clip(Path(workdir or tmp) / "client.mp4", seconds=4.0, gop=100,
                                     width=320, height=240, fps=25)
        try:
            # A few challenges at a time, then silence: a dormant adversary costs nothing.
            names = list(names)
            for first in range(0, len(names), WAVE):
                wave = names[first:first + WAVE]
                for i, name in enumerate(wave):
                    adversaries[name] = start(api, chain_id, name, f"{seed}{first + i:02x}",
                                              trace.append)
                for name in wave:
                    agent = adversaries[name][0]
                    _wait(lambda a=agent, n=name: _verified(api, a, job_class_of(n)),
                          timeout_s, f"{name}'s challenge", trace)
                    agent.activate(False, settle=False)
            for name, (agent, _) in adversaries.items():
                agent.activate(True)
                try:
                    for trial in range(trials):
                        outcome = _one_job(api, agent, source, trial, timeout_s)
                        log(f"{name:32s} {outcome.job_id} {outcome.state:9s} handed in "
                            f"{outcome.handed_in}, caught {outcome.caught}, delivered "
                            f"{outcome.delivered}; reasons {', '.join(outcome.reasons)}")
                        outcomes.append(outcome)
                finally:
                    agent.activate(False)
        finally:
            for agent, thread in adversaries.values():
                agent.stop()
            for agent, thread in adversaries.values():
                thread.join(timeout=60)
    return outcomes


def _one_job(api: Api, agent: Adversary, source: Path, trial: int, timeout_s: float) -> Outcome:
    job_class = job_class_of(agent.cheat)
    before = set(agent.handed_in)
    if job_class == "ffmpeg_hls":
        slot = api.upload(source)
        manifest = {"kind": job_class, "input_uri": slot["input_uri"],
                    "input_hash": slot["input_hash"]}
    elif job_class == "embed_batch":
        manifest = {"kind": job_class, "texts": random.sample(TEXTS, 12)}
    else:
        manifest = {"kind": job_class, "prompt": PROMPTS[trial % len(PROMPTS)],
                    "max_tokens": 12}
    job, _ = api.submit(manifest, idempotency_key=str(uuid.uuid4()))
    job_id = job["job_id"]
    final = _wait(lambda: _terminal(api, job_id), timeout_s, f"job {job_id}")
    cheated = agent.handed_in - before
    events = api.events(job_id)["events"]
    if job_class == "ffmpeg_hls":
        mine = [e for e in events if e["data"].get("worker") == agent.did]
        handed_in = sum(e["type"] == "segment.submitted" for e in mine)
        rejected = [e["data"].get("reason") for e in mine if e["type"] == "segment.rejected"]
        caught = len(rejected)
        verified = {e["data"]["worker"] for e in events if e["type"] == "segment.verified"}
        delivered_hashes = ({f["sha256"] for f in api.package(job_id).get("files", [])}
                            if final["state"] == "settled" else set())
    else:
        attempts = [a for a in final.get("attempts", []) if a["worker"] == agent.did]
        handed_in = sum(a["state"] in ("passed", "failed") for a in attempts)
        rejected = [a["reason"] for a in attempts if a["state"] == "failed"]
        caught = len(rejected)
        verified = {a["worker"] for a in final.get("attempts", []) if a["state"] == "passed"}
        delivered_hashes = {o["sha256"] for o in final.get("outputs", [])}
    reputation = api.worker(agent.did)["reputation"].get(job_class, {})
    return Outcome(agent.cheat, agent.did, job_id, final["state"], handed_in, caught,
                   bool(cheated & delivered_hashes), sorted(verified),
                   reputation.get("validation_failures", 0),
                   sorted(set(map(str, rejected))))


def _verified(api: Api, agent: Adversary, job_class: str) -> bool:
    try:
        challenge = api.worker(agent.did).get("challenges", {}).get(job_class) or {}
    except ApiError:                      # not registered yet
        return False
    if challenge.get("state") == "failed" and not challenge.get("retryable"):
        raise AssertionError(f"{agent.cheat}: its honest challenge failed: {challenge}")
    return challenge.get("state") == "passed"


def _terminal(api: Api, job_id: str) -> dict | None:
    job = api.job(job_id)
    return job if job["state"] in TERMINAL else None


def _wait(predicate, timeout_s: float, what: str, trace=(), poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}; the agents said:\n"
                         + "\n".join(trace))
