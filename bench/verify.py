"""`python -m bench verify`: the verification scorecard.

Every cheat in the catalogue (`bench/cheats.py`) is made afresh for each trial and handed to
the verifier's own entry point (`media_worker.verify.judge_video` / `judge_audio`, the
functions the segment check runs; `chalicelib.verification.inference` for inference) with a
fresh audit secret, at the depth an untrusted worker gets. For each cheat: the share of
trials caught and its 95 % lower confidence bound (Clopper–Pearson), and how many cheated
segments would have been promoted. Honest work with honest variation (x264 presets, thread
counts, another FFmpeg build, batch sizes) must pass every time. Cost: verification CPU
seconds per execution CPU second, for the trusted pool (structure and hashes on every
segment, content on a drawn tenth) and for a new worker (every frame of every segment).

Every cheat that travels the lease path is also run end to end (`bench/verify_e2e.py`):
marketplace adversaries that pass their challenge honestly, win client jobs over HTTP on a
local stack and hand the cheat in signed; those jobs count in the totals, and the `e2e`
column shows them alone.

`PROOFLINE_BENCH_VIDEO_TRIALS` (default 100), `PROOFLINE_BENCH_INFERENCE_TRIALS` (default
300) and `PROOFLINE_BENCH_E2E_TRIALS` (default 3; 0 skips the stack) set the trials per
cheat.
"""
from __future__ import annotations

import math
import os
import random
import resource
import secrets
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np

from bench import cheats, verify_e2e, verify_inference
from chalicelib import catalog
from chalicelib.media import ffmpeg_args, profiles
from chalicelib.media.probe import sha256_file
from chalicelib.verification import audit
from media_worker import verify

WIDTH, HEIGHT, FPS, SECONDS = 320, 180, 30, 2.0    # small and short: minutes for the lot
PROFILE = profiles.get_profile("hls-abr")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
HONEST_PRESETS = ("veryfast", "faster", "fast", "medium")   # (ultrafast is Baseline: off-profile)
# The media pool's share of segments whose content is audited, as the class says.
TRUSTED_RATE = catalog.default().job_class("ffmpeg_hls").verification.content_audit.trusted


def clopper_pearson_lower(caught: int, trials: int, alpha: float = 0.05) -> float:
    """The exact two-sided (1 - alpha) lower bound on the catch rate."""
    if caught == 0:
        return 0.0

    def tail(p: float) -> float:               # P(X >= caught | p)
        return sum(math.comb(trials, k) * p ** k * (1 - p) ** (trials - k)
                   for k in range(caught, trials + 1))
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if tail(mid) < alpha / 2 else (low, mid)
    return low


class Scene:
    """The source segment (video with varying sound), another clip, and their frames."""

    def __init__(self, work: Path, width: int = WIDTH, height: int = HEIGHT):
        self.work, self.width, self.height = work, width, height
        self.source = work / "source.mp4"
        self.other = work / "other.mp4"
        _lavfi(self.source, "testsrc2", (width, height),
               audio="sine=frequency=440:beep_factor=4")
        _lavfi(self.other, "smptehdbars", (width, height))
        self.frames = _frames(self.source)
        self.other_frames = _frames(self.other)
        self.planned = profiles.ladder(PROFILE, width, height)[0]
        # As the verifier keeps it: the candidates for full-resolution comparison drawn with
        # a secret of its own (each trial then draws its SSIM frames among them).
        self.reference = verify.Reference.of(
            self.source, SECONDS, ssim_frames=3,
            key=audit.audit_key(secrets.token_hex(32), subject="source", committed=["s"]))
        self.audio_source = work / "source.wav"
        subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(self.source), "-vn", "-ac", "1",
                        "-ar", "16000", str(self.audio_source)], check=True)

    def encode(self, frames, name: str, *, planned=None, preset: str | None = None,
               threads: int | None = None) -> tuple[Path, float]:
        """Frames (yuv420p arrays) through the project's own argument list; (path, CPU s)."""
        raw = self.work / f"{name}.y4m"
        with av.open(str(raw), "w", format="yuv4mpegpipe") as out:
            stream = out.add_stream("rawvideo", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            for array in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="yuv420p")):
                    out.mux(packet)
        return self.encode_file(raw, name, planned=planned, preset=preset, threads=threads)

    def encode_file(self, source: Path, name: str, *, planned=None, preset=None,
                    threads=None) -> tuple[Path, float]:
        profile = PROFILE
        if preset or threads:
            profile = PROFILE.model_copy(update={"video": PROFILE.video.model_copy(update={
                **({"preset": preset} if preset else {}),
                **({"threads": threads} if threads else {})})})
        target = self.work / f"{name}.ts"
        args = ffmpeg_args.video_segment_args(profile, planned or self.planned, fps=Fraction(FPS),
                                              start_s=0.0, input_path=source,
                                              output_path=target)
        before = _children_cpu()
        subprocess.run([FFMPEG, *args], check=True, capture_output=True)
        return target, _children_cpu() - before

    def judge(self, candidate: Path, *, audited: bool = True):
        sha = sha256_file(candidate)
        key = audit.audit_key(secrets.token_hex(32), subject=candidate.name, committed=[sha])
        started = time.process_time()
        verdict = verify.judge_video(
            candidate, reported_sha256=sha, actual_sha256=sha, planned=self.planned,
            fps=Fraction(FPS), segment_s=PROFILE.segment_s, start_s=0.0,
            source_duration_s=SECONDS, source=self.source if audited else None,
            reference=self.reference if audited else None, key=key if audited else None,
            ssim_frames=3)
        return verdict, time.process_time() - started


def run() -> dict[str, float]:
    trials = int(os.environ.get("PROOFLINE_BENCH_VIDEO_TRIALS", "100"))
    seed = os.environ.get("PROOFLINE_BENCH_SEED") or secrets.token_hex(8)
    results: dict[str, float] = {}
    with ProcessPoolExecutor(os.cpu_count() or 1, initializer=_start_worker) as pool:
        honest = list(pool.map(_honest_trial, [f"{seed}:h{i}" for i in range(max(50, trials // 2))]))
        outcomes = pool.map(_cheat_trial, [(c, f"{seed}:{c}:{i}") for c in
                                           range(len(cheats.VIDEO_CHEATS)) for i in range(trials)])
        caught: dict[str, list[int]] = {c.name: [0, 0] for c in cheats.VIDEO_CHEATS}
        for name, passed in outcomes:
            caught[name][0 if not passed else 1] += 1
        audio = list(pool.map(_audio_trial, [f"{seed}:a{i}" for i in range(trials)]))
    results.update(_honest_summary(honest))
    results.update(_cost_at_720p())
    rows = [(c.name, c.touches, caught[c.name][0], trials, caught[c.name][1])
            for c in cheats.VIDEO_CHEATS]
    rows += _audio_summary(audio, trials)
    results["verify_honest_audio_rejected"] = sum(not t["honest"] for t in audio)
    rows += verify_inference.run(int(os.environ.get("PROOFLINE_BENCH_INFERENCE_TRIALS", "300")),
                                 random.Random(seed), results)
    # The end-to-end trials (adversaries through the lease API) count with the rest.
    e2e = verify_e2e.run() if int(os.environ.get("PROOFLINE_BENCH_E2E_TRIALS", "3")) else {}
    rows = [(name, touches, hit + e2e.get(name, [0])[0], n + e2e.get(name, [0, 0])[1],
             promoted + e2e.get(name, [0, 0, 0])[2]) for name, touches, hit, n, promoted in rows]
    print(f"\n{'cheat':34s} {'fakes':30s} {'caught':>9s} {'rate':>6s} {'95% LCB':>8s} "
          f"{'e2e':>5s} {'delivered':>9s}")
    for name, touches, hit, n, promoted in rows:
        lower = clopper_pearson_lower(hit, n)
        through = "{}/{}".format(*e2e[name][:2]) if name in e2e else "-"
        print(f"{name:34s} {touches:30s} {hit:4d}/{n:<4d} {hit / n:6.3f} {lower:8.4f} "
              f"{through:>5s} {promoted:9d}")
        results[f"verify_caught_{name}"] = round(hit / n, 4)
        results[f"verify_caught_{name}_lcb95"] = round(lower, 4)
    results["verify_cheats_min_catch_rate"] = min(c / n for _, _, c, n, _ in rows)
    results["verify_cheated_bytes_delivered"] = sum(p for *_, p in rows)
    return results


_SCENE: Scene | None = None


def _start_worker() -> None:
    global _SCENE
    _SCENE = Scene(Path(tempfile.mkdtemp(prefix="proofline-verify-")))


def _cheat_trial(job: tuple[int, str]) -> tuple[str, bool]:
    index, seed = job
    cheat, scene, rng = cheats.VIDEO_CHEATS[index], _SCENE, random.Random(seed)
    frames = cheat.make(scene.frames, scene.other_frames, rng)
    planned = scene.planned
    if cheat.bitrate_ratio != 1.0 or cheat.size:
        ratio = cheat.bitrate_ratio
        planned = planned.model_copy(update={
            "video_bitrate_k": max(10, int(planned.video_bitrate_k * ratio)),
            "maxrate_k": max(10, int(planned.maxrate_k * ratio)),
            "bufsize_k": max(10, int(planned.bufsize_k * ratio)),
            **({"width": cheat.size[0], "height": cheat.size[1]} if cheat.size else {})})
    path, _ = scene.encode(frames, f"{cheat.name}-{secrets.token_hex(4)}", planned=planned)
    verdict, _ = scene.judge(path)
    path.unlink()
    return cheat.name, verdict.passed


def _honest_trial(seed: str) -> tuple[bool, str | None, float, float, float, float]:
    """An honest segment with honest variation (preset, threads, or the source decoded by
    another FFmpeg build, PyAV's): (passed, reason, worst frame distance, encode CPU,
    full-depth verify CPU, structure-only verify CPU)."""
    scene, rng = _SCENE, random.Random(seed)
    name = f"honest-{secrets.token_hex(4)}"
    if rng.random() < 1 / 3:
        path, cpu = scene.encode(scene.frames, name, preset=rng.choice(HONEST_PRESETS))
    else:
        path, cpu = scene.encode_file(scene.source, name, preset=rng.choice(HONEST_PRESETS),
                                      threads=rng.choice([1, 2, 4]))
    verdict, full = scene.judge(path)
    _, structure = scene.judge(path, audited=False)
    path.unlink()
    return (verdict.passed, verdict.reason, verdict.measured.get("frame_distance_max") or 0.0,
            cpu, full, structure)


def _cost_at_720p() -> dict[str, float]:
    """The full-depth check against the encode for a 2 s 720p segment (the `hls-abr` 720p
    rung, the project's own settings): the small segments above flatter neither side, but
    decoding and comparing grow with the picture as x264 does."""
    with tempfile.TemporaryDirectory(prefix="proofline-verify-720p-") as tmp:
        scene = Scene(Path(tmp), 1280, 720)
        encode = full = 0.0
        for i, preset in enumerate(("veryfast", "faster", "veryfast")):
            path, cpu = scene.encode_file(scene.source, f"h{i}", preset=preset)
            verdict, checked = scene.judge(path)
            assert verdict.passed, verdict.reason
            encode, full = encode + cpu, full + checked
    print(f"720p: encode {encode / 3:.3f} CPU-s per segment, full-depth check {full / 3:.3f}")
    return {"verify_cpu_over_encode_cpu_new_worker_720p": round(full / encode, 4)}


def _honest_summary(trials: list[tuple]) -> dict[str, float]:
    rejected = [t for t in trials if not t[0]]
    for t in rejected:
        print(f"honest segment rejected: {t[1]}")
    encode, full, structure = (float(np.mean([t[i] for t in trials])) for i in (3, 4, 5))
    trusted = structure + TRUSTED_RATE * (full - structure)
    worst = max(t[2] for t in trials)
    print(f"honest video: {len(trials) - len(rejected)}/{len(trials)} passed; worst frame "
          f"distance {worst:.2f}; per segment: encode {encode:.3f} CPU-s, full-depth check "
          f"{full:.3f}, structure only {structure:.3f}")
    return {"verify_honest_trials": len(trials), "verify_honest_rejected": len(rejected),
            "verify_honest_worst_frame_distance": round(worst, 3),
            "verify_cpu_over_encode_cpu_new_worker": round(full / encode, 4),
            "verify_cpu_over_encode_cpu_trusted_pool": round(trusted / encode, 4)}


def _audio_trial(seed: str) -> dict[str, bool]:
    """The audio track, honest and against silence, another track and a shifted source:
    name → passed."""
    scene, rng, rate = _SCENE, random.Random(seed), 16_000
    with av.open(str(scene.audio_source)) as container:
        source = np.concatenate([f.to_ndarray().reshape(-1) for f in
                                 container.decode(audio=0)]).astype(np.float64) / 32768
    passed = {}
    for name, samples in [("honest", source), *cheats.audio_cheats(rate, SECONDS, source,
                                                                  rng).items()]:
        track = _aac(scene.work / f"{name}-{secrets.token_hex(4)}", samples, rate)
        verdict = verify.judge_audio(
            {"audio/audio.m4a": track}, reported={"audio/audio.m4a": "x"},
            actual={"audio/audio.m4a": "x"}, container="mp4", source_duration_s=SECONDS,
            source=scene.source)
        passed[name] = verdict.passed
        track.unlink()
    return passed


def _audio_summary(trials: list[dict[str, bool]], n: int) -> list[tuple]:
    print(f"honest audio: {sum(t['honest'] for t in trials)}/{n} passed")
    names = [k for k in trials[0] if k != "honest"]
    return [(name, "the whole track", sum(not t[name] for t in trials), n,
             sum(t[name] for t in trials)) for name in names]


def _aac(base: Path, samples: np.ndarray, rate: int) -> Path:
    wav, out = base.with_suffix(".wav"), base.with_suffix(".m4a")
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "s16le", "-ar", str(rate), "-ac", "1",
                    "-i", "-", "-c:a", "aac", "-b:a", "64k", str(out)], input=pcm, check=True)
    wav.unlink(missing_ok=True)
    return out


def _lavfi(path: Path, pattern: str, size: tuple[int, int], audio: str | None = None) -> None:
    args = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
            f"{pattern}=size={size[0]}x{size[1]}:rate={FPS}:duration={SECONDS}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"{audio}:sample_rate=44100:duration={SECONDS}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(FPS)]
    if audio:
        args += ["-c:a", "aac", "-b:a", "96k"]
    subprocess.run([*args, str(path)], check=True)


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
