"""Deterministic test media for the demo, the tests and the benchmarks.

Clips come from ffmpeg's lavfi sources, so no fixture files live in the repository; the
bitexact flags keep repeated runs byte-identical where the encoders allow it.
"""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import imageio_ffmpeg

_TIMEOUT_S = 120
_BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]


def make_clip(path, *, seconds: float = 2.0, width: int = 320, height: int = 240, fps: int = 25,
              audio: bool = True, video: bool = True, seed_pattern: str = "testsrc2") -> Path:
    """Encode an H.264/AAC clip (or audio-only when video=False) of `seconds` at `path`."""
    if not (audio or video):
        raise ValueError("a clip needs audio, video or both")
    args = ["-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"{seed_pattern}=size={width}x{height}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    # The container (mp4 vs m4a) follows the path's suffix, which ffmpeg picks from the name.
    args += ["-map_metadata", "-1", *_BITEXACT, str(path)]
    return _ffmpeg(args, path)


def make_still(path, width: int = 64, height: int = 48) -> Path:
    """Write one PNG frame: valid media that higher layers may reject as not a video."""
    args = ["-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=1",
            "-frames:v", "1", "-map_metadata", "-1", *_BITEXACT, str(path)]
    return _ffmpeg(args, path)


def make_corrupt(path, size: int = 4096) -> Path:
    """Write `size` fixed pseudo-random bytes: a file no demuxer recognises."""
    data = random.Random(1234).randbytes(size)
    path = Path(path)
    path.write_bytes(data)
    return path


def make_empty(path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def _ffmpeg(args: list[str], path) -> Path:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg timed out after {_TIMEOUT_S}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.strip()}")
    return Path(path)
