"""Running the ffmpeg binary imageio-ffmpeg ships: each call bounded by a timeout, with the
tail of its stderr kept for the error details.
"""
from __future__ import annotations

import functools
import os
import subprocess
import time

import imageio_ffmpeg

from chalicelib.errors import FfmpegFailed, FfmpegTimeout

from .reading import Model, PathLike

_STDERR_TAIL = 4096


class FfmpegRun(Model):
    args: list[str]
    returncode: int
    stderr: str
    wall_s: float


class DecodeCheck(Model):
    ok: bool
    returncode: int
    stderr: str
    wall_s: float


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    """The build this process runs ("7.1-static", say): recorded with each task it encodes,
    since x264's output differs between builds."""
    try:
        out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    return words[2][:64] if out.startswith("ffmpeg version") and len(words) > 2 else "unknown"


def run_ffmpeg(args: list[str], *, timeout_s: float) -> FfmpegRun:
    """Run ffmpeg with `args`; raise FfmpegTimeout or FfmpegFailed (stderr in the details)."""
    run = _execute(args, timeout_s=timeout_s)
    if run.returncode != 0:
        raise FfmpegFailed(f"ffmpeg exited with {run.returncode}: {run.stderr[-300:].strip()}",
                           details=run.model_dump())
    return run


def decode_check(path: PathLike, *, timeout_s: float) -> DecodeCheck:
    """Decode everything in a file or playlist; ok only if ffmpeg exits 0 and says nothing.

    The HLS demuxer skips a segment it cannot open with only a warning, so a playlist missing
    its last segment still passes: check a playlist's segments separately.
    """
    # -xerror fails packets the demuxer flags corrupt, e.g. the TS discontinuity where a
    # playlist's middle segment is missing; otherwise those are only warnings.
    run = _execute(["-xerror", "-i", os.fspath(path), "-f", "null", "-"], timeout_s=timeout_s)
    ok = run.returncode == 0 and not run.stderr.strip()
    return DecodeCheck(ok=ok, returncode=run.returncode, stderr=run.stderr, wall_s=run.wall_s)


def _execute(args: list[str], *, timeout_s: float) -> FfmpegRun:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    started = time.monotonic()
    try:
        # stdout is discarded: nothing here pipes media out, and it could be unbounded.
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        details = {"args": args, "timeout_s": timeout_s, "stderr": _tail(exc.stderr)}
        raise FfmpegTimeout(f"ffmpeg ran past {timeout_s:g}s", details=details) from None
    return FfmpegRun(args=args, returncode=proc.returncode, stderr=_tail(proc.stderr),
                     wall_s=time.monotonic() - started)


def _tail(stderr: bytes | None) -> str:
    text = (stderr or b"").decode("utf-8", errors="replace")
    if len(text) <= _STDERR_TAIL:
        return text
    tail = text[-_STDERR_TAIL:]
    return tail[tail.find("\n") + 1:]  # whole lines only; the first one was cut
