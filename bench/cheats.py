"""The cheat catalogue: what an informed worker hands in instead of honest work.

Each video cheat turns the source segment's frames into the frames the worker encodes (with
the project's own encoder settings, so the segment is structurally perfect: only content,
frame count or bitrate can give it away). Every trial draws a fresh instance: which frames,
which corner, which other clip.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

Frames = list[np.ndarray]          # yuv420p planes stacked as one (h * 3 / 2, w) uint8 array


@dataclass(frozen=True)
class VideoCheat:
    name: str
    touches: str                   # what share of the segment it fakes, in words
    make: Callable[[Frames, Frames, random.Random], Frames]
    bitrate_ratio: float = 1.0     # of the rendition's target
    size: tuple[int, int] | None = None   # encode at another size (another rendition's)


def _black(frame: np.ndarray, height: int) -> np.ndarray:
    out = np.full_like(frame, 128)
    out[:height] = 16
    return out


def _fraction(n: int, share: float) -> int:
    return max(1, math.ceil(n * share))


def black_but_three(src: Frames, other: Frames, rng: random.Random) -> Frames:
    h = src[0].shape[0] * 2 // 3
    keep = set(rng.sample(range(len(src)), 3))
    return [f if i in keep else _black(f, h) for i, f in enumerate(src)]


def one_second_other(src: Frames, other: Frames, rng: random.Random) -> Frames:
    n = len(src)
    span = min(n, 30)
    start = rng.randrange(0, n - span + 1)
    return [other[i] if start <= i < start + span else f for i, f in enumerate(src)]


def five_percent_other(src: Frames, other: Frames, rng: random.Random) -> Frames:
    swap = set(rng.sample(range(len(src)), _fraction(len(src), 0.05)))
    return [other[i] if i in swap else f for i, f in enumerate(src)]


def another_video(src: Frames, other: Frames, rng: random.Random) -> Frames:
    offset = rng.randrange(len(other))
    return [other[(i + offset) % len(other)] for i in range(len(src))]


def downscaled(src: Frames, other: Frames, rng: random.Random) -> Frames:
    h, w = src[0].shape[0] * 2 // 3, src[0].shape[1]
    factor = rng.choice([4, 5, 8])
    out = []
    for f in src:
        y = f[:h]
        small = y[::factor, ::factor]
        up = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)[:h, :w]
        g = f.copy()
        g[:h] = up
        out.append(g)
    return out


def watermark(src: Frames, other: Frames, rng: random.Random) -> Frames:
    h, w = src[0].shape[0] * 2 // 3, src[0].shape[1]
    top, left = rng.choice([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)])
    level = rng.choice([40, 200, 235])
    out = []
    for f in src:
        g = f.copy()
        g[top:top + h // 2, left:left + w // 2] = level
        out.append(g)
    return out


def half_frame_rate(src: Frames, other: Frames, rng: random.Random) -> Frames:
    phase = rng.randrange(2)
    return [src[max(0, i - (i + phase) % 2)] for i in range(len(src))]


def dropped_frames(src: Frames, other: Frames, rng: random.Random) -> Frames:
    drop = set(rng.sample(range(len(src)), _fraction(len(src), 0.05)))
    kept = [f for i, f in enumerate(src) if i not in drop]
    return kept + [kept[-1]] * len(drop)         # padded at the end: the count stays right


def duplicated_frames(src: Frames, other: Frames, rng: random.Random) -> Frames:
    dup = set(rng.sample(range(1, len(src)), _fraction(len(src), 0.05)))
    out, shown = [], 0
    for i in range(len(src)):
        out.append(src[shown])
        if i not in dup:
            shown += 1
    return out


def truncated(src: Frames, other: Frames, rng: random.Random) -> Frames:
    return src[:len(src) - rng.randrange(3, len(src) // 4)]


def shifted(src: Frames, other: Frames, rng: random.Random) -> Frames:
    k = rng.randrange(3, 10)
    return src[k:] + [src[-1]] * k


def same(src: Frames, other: Frames, rng: random.Random) -> Frames:
    return list(src)


VIDEO_CHEATS = [
    VideoCheat("another_video", "100% of frames", another_video),
    VideoCheat("black_but_3_frames", "all but 3 frames", black_but_three),
    VideoCheat("one_second_replaced", "1 s of the segment", one_second_other),
    VideoCheat("5pct_frames_replaced", "5% of frames", five_percent_other),
    VideoCheat("tenth_bitrate", "every frame, 10% of the bits", same, bitrate_ratio=0.1),
    VideoCheat("downscaled_and_up", "every frame, 1/4-1/8 resolution", downscaled),
    VideoCheat("quarter_watermark", "a quarter of every frame", watermark),
    VideoCheat("half_frame_rate", "every other frame", half_frame_rate),
    VideoCheat("5pct_frames_dropped", "5% of frames", dropped_frames),
    VideoCheat("5pct_frames_duplicated", "5% of frames", duplicated_frames),
    VideoCheat("truncated", "the segment's end", truncated),
    VideoCheat("shifted_in_time", "every frame, 3-9 frames late", shifted),
    VideoCheat("other_rendition", "another rendition's segment", same, size=(256, 144)),
    VideoCheat("other_jobs_segment", "a segment of another job", another_video),
]


def audio_cheats(rate: int, seconds: float, source: np.ndarray,
                 rng: random.Random) -> dict[str, np.ndarray]:
    """Mono float samples a worker could hand in for the audio track: silence, another
    track, the source shifted in time."""
    t = np.arange(int(rate * seconds)) / rate
    other_freq = rng.choice([220.0, 330.0, 660.0, 880.0])
    shift = int(rate * rng.uniform(0.3, 0.8))
    return {
        "audio_silenced": np.zeros_like(source),
        "audio_other_track": 0.3 * np.sin(2 * np.pi * other_freq * t)[:len(source)],
        "audio_shifted": np.concatenate([np.zeros(shift), source[:-shift]]),
    }
