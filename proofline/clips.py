"""Deterministic test media for the demo, the tests and the benchmarks.

Clips come from ffmpeg's lavfi sources, so no fixture files live in the repository; the
bitexact flags keep repeated runs byte-identical where the encoders allow it.
"""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import imageio_ffmpeg

from chalicelib.aws.blobs import S3Uri
from chalicelib.market.challenges import CHALLENGES

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


def make_gop_clip(path, *, seconds: float = 6.0, gop: int = 50, width: int = 320,
                  height: int = 240, fps: int | str = 25, audio: bool = True,
                  bframes: int = 0) -> Path:
    """An H.264 clip with a keyframe every `gop` frames and nowhere else, so a split at
    multiples of gop/fps seconds lines up with keyframes and any other split does not.
    `fps` is anything ffmpeg takes as a rate, "30000/1001" included."""
    args = ["-y", *_testsrc(width, height, fps, seconds)]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-bf", str(bframes),
             "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    return _ffmpeg([*args, "-map_metadata", "-1", *_BITEXACT, str(path)], path)


def make_vfr_clip(path, *, seconds: float = 3.0, width: int = 320, height: int = 240,
                  fps: int = 25) -> Path:
    """A variable-frame-rate H.264 clip: frame gaps alternate 0.6x and 1.4x the nominal
    interval, so the average rate stays `fps`."""
    # A millisecond time base end to end, or the encoder rounds the jitter back onto 1/fps.
    jitter = f"settb=1/1000,setpts=(N+0.25*mod(N\\,2))/({fps}*TB)"
    args = ["-y", *_testsrc(width, height, fps, seconds), "-vf", jitter,
            "-fps_mode", "passthrough", "-enc_time_base:v", "1/1000",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-map_metadata", "-1", *_BITEXACT, str(path)]
    return _ffmpeg(args, path)


def make_rotated_clip(path, *, rotation: int = 90, seconds: float = 2.0, width: int = 320,
                      height: int = 240, fps: int = 25) -> Path:
    """An H.264 clip whose pictures are stored unrotated with a display matrix saying
    `rotation` degrees counter-clockwise, as phones record portrait video."""
    # -noautorotate, or ffmpeg would apply the matrix it was just given while encoding.
    args = ["-y", "-display_rotation", str(rotation), "-noautorotate",
            *_testsrc(width, height, fps, seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-map_metadata", "-1", *_BITEXACT, str(path)]
    return _ffmpeg(args, path)


def make_odd_clip(path, *, seconds: float = 2.0, width: int = 319, height: int = 239,
                  fps: int = 25) -> Path:
    """An H.264 clip with odd dimensions; 4:2:0 cannot hold those, so it is 4:4:4."""
    # testsrc2 rounds its own size to even, so the odd size comes from the scaler.
    args = ["-y", *_testsrc(width + 1, height + 1, fps, seconds),
            "-vf", f"scale={width}:{height},format=yuv444p",
            "-c:v", "libx264", "-preset", "ultrafast", "-map_metadata", "-1", *_BITEXACT, str(path)]
    return _ffmpeg(args, path)


def make_mpeg2_clip(path, *, seconds: float = 2.0, width: int = 320, height: int = 240,
                    fps: int = 25) -> Path:
    """An MPEG-2 video clip (no audio): valid video in a codec other than H.264."""
    args = ["-y", *_testsrc(width, height, fps, seconds), "-c:v", "mpeg2video", "-q:v", "3",
            "-map_metadata", "-1", *_BITEXACT, str(path)]
    return _ffmpeg(args, path)


def make_garbled_video(path, *, seconds: float = 1.0) -> Path:
    """An MP4 whose container is intact but whose video samples are noise: it opens and
    demuxes, and no frame decodes."""
    path = make_clip(path, seconds=seconds, audio=False)
    data = bytearray(path.read_bytes())
    box = data.index(b"mdat")  # a 4-byte size precedes the box type
    size = int.from_bytes(data[box - 4:box], "big")
    data[box + 4:box - 4 + size] = random.Random(1234).randbytes(size - 8)
    path.write_bytes(bytes(data))
    return path


def _testsrc(width: int, height: int, fps: int | str, seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"]


def _ffmpeg(args: list[str], path) -> Path:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg timed out after {_TIMEOUT_S}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.strip()}")
    return Path(path)


# The starting pool of challenge clips: lavfi patterns of different looks, sizes and lengths.
# An operator grows the pool by putting any video under the class's prefix.
CHALLENGE_CLIPS = (("testsrc2", 320, 240, 8.0), ("smptehdbars", 320, 180, 6.0),
                   ("rgbtestsrc", 256, 144, 8.0), ("testsrc", 320, 240, 5.0))


def seed_challenges(blobs, bucket: str, workdir) -> list[str]:
    """Put the starting pool of clips challenge jobs transcode (`CHALLENGES` in
    chalicelib.market.challenges) into the artifacts bucket, where missing; returns the URIs
    written."""
    written = []
    for job_class, spec in CHALLENGES.items():
        if spec.clips is None:               # an inline challenge: nothing to store
            continue
        for pattern, width, height, seconds in CHALLENGE_CLIPS:
            uri = S3Uri(bucket, f"{spec.clips}{pattern}-{width}x{height}.mp4")
            if blobs.head(uri) is not None:
                continue
            clip = make_clip(Path(workdir) / f"{job_class}-{pattern}.mp4", seconds=seconds,
                             width=width, height=height, audio=False, seed_pattern=pattern)
            blobs.upload(uri, clip)
            written.append(str(uri))
    return written
