"""The ffmpeg argument lists that encode a transcode profile, and the template a job stores.

Every value that reaches an argument list comes from a validated Profile or PlannedRendition
(a number or a member of a fixed set), and every path must be absolute, so no client string can
become an ffmpeg option. Nothing here runs ffmpeg or does I/O.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any, Literal, Sequence

from chalicelib.media.profiles import PlannedRendition, Profile

# Bump whenever an argument list below changes meaning: a job stores the version it ran with,
# so outputs made by different templates are never compared as if they were the same.
COMMAND_TEMPLATE_VERSION = "proofline-x264-ts/1"

_GLOBAL = ["-hide_banner", "-nostdin", "-y"]


# -- the stored template ---------------------------------------------------------------------
def command_template(profile: Profile, planned: Sequence[PlannedRendition], *,
                     fps: Fraction | int | None = None) -> dict[str, Any]:
    """Every setting the argument lists pin, as JSON, to store on the job beside the version."""
    return {
        "version": COMMAND_TEMPLATE_VERSION,
        "profile": profile.name,
        "container": profile.container,
        "segment_s": profile.segment_s,
        "fps": None if fps is None else _fps_arg(fps),
        "video": {**profile.video.model_dump(mode="json"), "bframes": 0, "sc_threshold": 0,
                  "rate_control": "abr+vbv", "gop": "fps*segment_s",
                  "force_key_frames": f"expr:gte(t,n_forced*{profile.segment_s})",
                  "fps_mode": "cfr", "bitexact": True},
        "audio": {**profile.audio.model_dump(mode="json"), "profile": "aac_low",
                  "output": "audio.m3u8" if profile.container == "hls" else "audio.m4a"},
        "renditions": [r.model_dump(mode="json") for r in planned],
    }


# -- argument lists ---------------------------------------------------------------------------
def video_segment_args(profile: Profile, planned: PlannedRendition, *, fps: Fraction | int,
                       start_s: float, input_path: str | os.PathLike,
                       output_path: str | os.PathLike) -> list[str]:
    """Encode one source segment (timestamps from 0) to one video-only MPEG-TS segment whose
    timestamps start at `start_s`, so the segments of a rendition play back to back."""
    return video_renditions_args(profile, [(planned, output_path)], fps=fps, start_s=start_s,
                                 input_path=input_path)


def video_renditions_args(profile: Profile,
                          outputs: Sequence[tuple[PlannedRendition, str | os.PathLike]], *,
                          fps: Fraction | int, start_s: float,
                          input_path: str | os.PathLike) -> list[str]:
    """Several renditions of one source segment from a single decode, as the raw ladder
    command does: the decoded picture is split and each branch scaled and encoded on its own.
    Each branch gets the same filters and encoder settings as `video_segment_args` gives its
    rendition alone, so a rendition redone alone is checked against the same bounds."""
    if not outputs:
        raise ValueError("no renditions to encode")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s {start_s!r} must be a non-negative number")
    args = [*_GLOBAL, "-i", _path(input_path)]
    if len(outputs) == 1:
        maps = [["-map", "0:v:0", "-vf", _scale_filter(profile, outputs[0][0])]]
    else:
        n = len(outputs)
        args += ["-filter_complex", f"[0:v:0]split={n}{''.join(f'[s{i}]' for i in range(n))};"
                 + ";".join(f"[s{i}]{_scale_filter(profile, r)}[v{i}]"
                            for i, (r, _) in enumerate(outputs))]
        maps = [["-map", f"[v{i}]"] for i in range(n)]
    for chosen, (planned, output_path) in zip(maps, outputs):
        args += [*chosen, "-an", "-sn", "-dn",
                 *_video_codec_args(profile, planned, fps, ":v"),
                 "-output_ts_offset", f"{float(start_s):.6f}",
                 "-muxdelay", "0", "-muxpreload", "0",
                 *_bitexact("v"), "-map_metadata", "-1",
                 # Each segment has its own muxer, so continuity counters restart: flag it, or
                 # a demuxer reading the playlist sees corrupt packets at every boundary.
                 "-mpegts_flags", "+initial_discontinuity", "-f", "mpegts",
                 _path(output_path)]
    return args


def audio_args(profile: Profile, *, input_path: str | os.PathLike,
               output_dir: str | os.PathLike) -> list[str]:
    """Encode the whole source's audio once, so AAC priming happens once, not per segment.

    hls profiles: `audio.m3u8` + `audio_NNNNN.ts` segments of `segment_s` in output_dir.
    mp4 profiles: one `audio.m4a` in output_dir, for mp4_mux_args to join with the video.
    """
    head = [*_GLOBAL, "-i", _path(input_path), "-map", "0:a:0", "-vn", "-sn", "-dn",
            *_audio_codec_args(profile, ":a"), *_bitexact("a"), "-map_metadata", "-1"]
    directory = _path(output_dir)
    if profile.container == "mp4":
        return [*head, "-f", "mp4", os.path.join(directory, "audio.m4a")]
    return [*head, "-muxdelay", "0", "-muxpreload", "0", *_hls_muxer(profile),
            "-hls_segment_filename", os.path.join(directory, "audio_%05d.ts"),
            os.path.join(directory, "audio.m3u8")]


def mp4_mux_args(segment_paths: Sequence[str | os.PathLike], *,
                 audio_path: str | os.PathLike | None, output_path: str | os.PathLike) -> list[str]:
    """Join a rendition's TS segments (and audio.m4a) into one mp4 without re-encoding."""
    if not segment_paths:
        raise ValueError("no segments to join")
    args = [*_GLOBAL, "-i", "concat:" + "|".join(_path(p) for p in segment_paths)]
    if audio_path is not None:
        args += ["-i", _path(audio_path)]
    args += ["-map", "0:v:0", *(["-map", "1:a:0"] if audio_path is not None else []),
             "-c", "copy", "-movflags", "+faststart", "-fflags", "+bitexact",
             "-map_metadata", "-1", "-f", "mp4", _path(output_path)]
    return args


def raw_ladder_args(profile: Profile, planned_renditions: Sequence[PlannedRendition], *,
                    fps: Fraction | int, input_path: str | os.PathLike,
                    output_dir: str | os.PathLike, audio: bool = True) -> list[str]:
    """The same ladder from one plain ffmpeg run: the baseline a benchmark compares against.

    hls: `<name>/index.m3u8` per rendition, `audio/index.m3u8` and `master.m3u8`, written by
    ffmpeg's own HLS muxer (which creates the folders). mp4: `video.mp4`.
    """
    if not planned_renditions:
        raise ValueError("no renditions to encode")
    n = len(planned_renditions)
    graph = f"[0:v:0]split={n}{''.join(f'[s{i}]' for i in range(n))};" + ";".join(
        f"[s{i}]{_scale_filter(profile, r)}[v{i}]" for i, r in enumerate(planned_renditions))
    args = [*_GLOBAL, "-i", _path(input_path), "-filter_complex", graph]
    for i in range(n):
        args += ["-map", f"[v{i}]"]
    if audio:
        args += ["-map", "0:a:0"]
    for i, rendition in enumerate(planned_renditions):
        args += _video_codec_args(profile, rendition, fps, f":v:{i}")
    if audio:
        args += _audio_codec_args(profile, ":a:0")
    args += [*_bitexact("v"), *(["-flags:a", "+bitexact"] if audio else []),
             "-map_metadata", "-1"]
    directory = _path(output_dir)
    if profile.container == "mp4":
        return [*args, "-movflags", "+faststart", "-f", "mp4",
                os.path.join(directory, "video.mp4")]
    group = ",agroup:aac" if audio else ""
    streams = [f"v:{i}{group},name:{r.name}" for i, r in enumerate(planned_renditions)]
    if audio:
        streams.append("a:0,agroup:aac,name:audio")
    return [*args, "-muxdelay", "0", "-muxpreload", "0", *_hls_muxer(profile),
            "-master_pl_name", "master.m3u8", "-var_stream_map", " ".join(streams),
            "-hls_segment_filename", os.path.join(directory, "%v", "seg_%05d.ts"),
            os.path.join(directory, "%v", "index.m3u8")]


def _scale_filter(profile: Profile, planned: PlannedRendition) -> str:
    return (f"scale=w={planned.width}:h={planned.height}:flags={profile.video.scaler},"
            f"setsar=1")


def _video_codec_args(profile: Profile, r: PlannedRendition, fps: Fraction | int,
                      spec: str) -> list[str]:
    gop = str(math.ceil(_positive_fps(fps) * profile.segment_s))
    video = profile.video
    return [
        f"-fps_mode{spec}", "cfr", f"-r{spec}", _fps_arg(fps),
        f"-c{spec}", video.codec, f"-preset{spec}", video.preset,
        f"-profile{spec}", r.h264_profile, f"-level{spec}", r.h264_level,
        f"-pix_fmt{spec}", video.pix_fmt,
        f"-b{spec}", f"{r.video_bitrate_k}k", f"-maxrate{spec}", f"{r.maxrate_k}k",
        f"-bufsize{spec}", f"{r.bufsize_k}k",
        f"-g{spec}", gop, f"-keyint_min{spec}", gop, f"-sc_threshold{spec}", "0",
        # Segments are encoded apart and joined: with B-frames each would start with a decode
        # delay that the TS muxer shifts away in the first segment only, overlapping the next.
        f"-bf{spec}", "0",
        f"-force_key_frames{spec}", f"expr:gte(t,n_forced*{profile.segment_s})",
        f"-threads{spec}", str(video.threads),
    ]


def _audio_codec_args(profile: Profile, spec: str) -> list[str]:
    audio = profile.audio
    return [f"-c{spec}", audio.codec, f"-profile{spec}", "aac_low",
            f"-b{spec}", f"{audio.bitrate_k}k", f"-ar{spec}", str(audio.sample_rate),
            f"-ac{spec}", str(audio.channels)]


def _hls_muxer(profile: Profile) -> list[str]:
    return ["-f", "hls", "-hls_time", str(profile.segment_s), "-hls_playlist_type", "vod",
            "-hls_segment_type", "mpegts"]


def _bitexact(stream: Literal["v", "a"]) -> list[str]:
    return ["-fflags", "+bitexact", f"-flags:{stream}", "+bitexact"]


def _positive_fps(fps: Fraction | int) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, Fraction)) or fps <= 0:
        raise ValueError(f"fps {fps!r} must be a positive int or Fraction (see output_fps)")
    return Fraction(fps)


def _fps_arg(fps: Fraction | int) -> str:
    return str(_positive_fps(fps))  # "25" or "30000/1001": exact, unlike a decimal


def _path(value: str | os.PathLike) -> str:
    # Absolute paths cannot be read as options ("-…") or protocols ("concat:…"); "%" and "|"
    # mean patterns and concat separators to ffmpeg.
    path = os.fspath(value)
    if not isinstance(path, str) or not os.path.isabs(path) or any(c in path for c in "%|\n\0"):
        raise ValueError(f"{path!r} must be an absolute path without %, | or newlines")
    return path
