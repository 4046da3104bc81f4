"""HLS playlists: write the VOD media and master playlists of a package, and check a finished
package against what the job asked for. Pure: strings and bytes in, strings and reports out.

Package layout: `master.m3u8`, `<rendition>/index.m3u8` with its segments beside it, and
`audio/audio.m3u8` for the one shared AAC group.
"""
from __future__ import annotations

import math
import posixpath
from fractions import Fraction
from typing import Any, Mapping, Sequence

import m3u8
from pydantic import BaseModel, ConfigDict, Field

from .profiles import AudioEncoder, PlannedRendition, Profile, codecs_string
from .verification import Verdict

MASTER = "master.m3u8"
AUDIO_PLAYLIST = "audio/audio.m3u8"
AUDIO_GROUP_ID = "aac"
_VERSION = 3  # the lowest with decimal EXTINF durations


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Strict):
    """One video rendition as the master playlist lists it; rates are video only."""
    uri: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    peak_bps: int = Field(gt=0)
    average_bps: int = Field(gt=0)
    codecs: str
    frame_rate: float = Field(gt=0)


class AudioGroup(_Strict):
    """The AAC rendition every variant shares."""
    uri: str = AUDIO_PLAYLIST
    group_id: str = AUDIO_GROUP_ID
    name: str = "audio"
    bitrate_bps: int = Field(gt=0)
    channels: int = Field(gt=0)
    codecs: str


def variant_uri(name: str) -> str:
    return f"{name}/index.m3u8"


def variant(planned: PlannedRendition, *, fps: Fraction | int | float) -> Variant:
    # Peak is the VBV maxrate: the most the encoder lets a rendition spend over its buffer.
    return Variant(uri=variant_uri(planned.name), width=planned.width, height=planned.height,
                   peak_bps=planned.maxrate_k * 1000, average_bps=planned.video_bitrate_k * 1000,
                   codecs=codecs_string(planned), frame_rate=float(fps))


def audio_group(profile: Profile) -> AudioGroup:
    audio: AudioEncoder = profile.audio
    return AudioGroup(bitrate_bps=audio.bitrate_k * 1000, channels=audio.channels,
                      codecs=codecs_string(audio))


def media_playlist(segments: Sequence[tuple[str, float]], *,
                   target_duration: int | None = None) -> str:
    """A VOD media playlist; durations are written with 6 decimals."""
    if not segments:
        raise ValueError("a media playlist needs at least one segment")
    for uri, duration in segments:
        _check_uri(uri)
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"segment {uri} has duration {duration!r}")
    written = [f"{duration:.6f}" for _, duration in segments]
    longest = math.ceil(max(float(d) for d in written))
    if target_duration is None:
        target_duration = longest
    elif target_duration < longest:
        # RFC 8216 4.3.3.1: no segment may round to more than the target duration.
        raise ValueError(f"target duration {target_duration} is under a {longest}s segment")
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{_VERSION}", f"#EXT-X-TARGETDURATION:{target_duration}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for (uri, _), duration in zip(segments, written):
        lines += [f"#EXTINF:{duration},", uri]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def master_playlist(variants: Sequence[Variant], *, audio: AudioGroup | None) -> str:
    """BANDWIDTH is the peak and AVERAGE-BANDWIDTH the mean of a variant plus its audio."""
    if not variants:
        raise ValueError("a master playlist needs at least one variant")
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    audio_bps = 0
    if audio is not None:
        _check_uri(audio.uri)
        audio_bps = audio.bitrate_bps
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{audio.group_id}",NAME="{audio.name}",'
                     f'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="{audio.channels}",URI="{audio.uri}"')
    for v in variants:
        _check_uri(v.uri)
        codecs = v.codecs if audio is None else f"{v.codecs},{audio.codecs}"
        attributes = [f"BANDWIDTH={v.peak_bps + audio_bps}",
                      f"AVERAGE-BANDWIDTH={v.average_bps + audio_bps}",
                      f"RESOLUTION={v.width}x{v.height}", f'CODECS="{codecs}"',
                      f"FRAME-RATE={v.frame_rate:.3f}"]
        if audio is not None:
            attributes.append(f'AUDIO="{audio.group_id}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attributes), v.uri]
    return "\n".join(lines) + "\n"


def _check_uri(uri: str) -> None:
    if not uri or any(c in uri for c in '"\r\n') or uri.startswith("#"):
        raise ValueError(f"{uri!r} cannot be written into a playlist")


# -- checking a package -----------------------------------------------------------------------
def check_package(files: Mapping[str, bytes], *, expected_duration_s: float, tolerance_s: float,
                  expected_segments: int | None = None) -> Verdict:
    """Check a package (relative path -> bytes) is complete and lasts what the source lasts.

    The segment count applies to the video renditions only: the audio group is cut by
    ffmpeg's own muxer on AAC frame boundaries, so its last segment can fall either side.
    """
    checks: dict[str, bool] = {}
    measured: dict[str, Any] = {"files": len(files)}
    master = _parse(files, MASTER)
    checks["master_present"] = MASTER in files
    checks["master_is_variant"] = master is not None and master.is_variant
    if not checks["master_is_variant"]:
        return Verdict("hls_package", checks, measured)

    variant_uris = [p.uri for p in master.playlists]
    audio_uris = [m.uri for m in master.media if m.type == "AUDIO" and m.uri]
    measured["variants"] = variant_uris
    measured["audio"] = audio_uris
    checks["variant_attributes"] = all(
        p.stream_info.bandwidth and p.stream_info.resolution and p.stream_info.codecs
        for p in master.playlists)

    playlists: dict[str, m3u8.M3U8 | None] = {
        uri: _parse(files, _resolve(MASTER, uri)) for uri in [*variant_uris, *audio_uris]}
    missing_playlists = [uri for uri, parsed in playlists.items() if parsed is None]
    checks["playlists_present"] = not missing_playlists
    measured["missing_playlists"] = missing_playlists
    present = {uri: parsed for uri, parsed in playlists.items() if parsed is not None}
    checks["media_playlists"] = all(not p.is_variant and p.segments for p in present.values())
    checks["endlist"] = all(p.is_endlist for p in present.values())
    checks["target_duration"] = all(
        p.target_duration is not None
        and all(_round_half_up(s.duration) <= p.target_duration for s in p.segments)
        for p in present.values())

    missing_segments: list[str] = []
    renditions: dict[str, dict[str, Any]] = {}
    for uri, parsed in present.items():
        base = _resolve(MASTER, uri)
        for segment in parsed.segments:
            path = _resolve(base, segment.uri)
            if path is None or path not in files:
                missing_segments.append(path or segment.uri)
        renditions[uri] = {"segments": len(parsed.segments),
                           "duration_s": round(sum(s.duration or 0 for s in parsed.segments), 6)}
    checks["segments_present"] = not missing_segments
    measured["missing_segments"] = missing_segments[:20]
    measured["renditions"] = renditions

    if expected_segments is not None:
        measured["expected_segments"] = expected_segments
        checks["segment_count"] = all(
            renditions[uri]["segments"] == expected_segments
            for uri in variant_uris if uri in renditions)
    measured["expected_duration_s"] = expected_duration_s
    measured["tolerance_s"] = tolerance_s
    checks["duration"] = all(abs(r["duration_s"] - expected_duration_s) <= tolerance_s
                             for r in renditions.values())
    return Verdict("hls_package", checks, measured)


def _parse(files: Mapping[str, bytes], path: str | None) -> m3u8.M3U8 | None:
    if path is None or path not in files:
        return None
    try:
        text = files[path].decode("utf-8")
    except UnicodeDecodeError:
        return None
    # m3u8 parses anything; only a file that says it is a playlist counts as one.
    if not text.startswith("#EXTM3U"):
        return None
    try:
        return m3u8.loads(text)
    except Exception:  # noqa: BLE001 - the library raises assorted errors on malformed tags
        return None


def _resolve(base: str | None, uri: str | None) -> str | None:
    """A URI relative to the playlist at `base`, as a package path; None if it leaves it."""
    if base is None or not uri or "://" in uri or uri.startswith("/"):
        return None
    path = posixpath.normpath(posixpath.join(posixpath.dirname(base), uri))
    return None if path == ".." or path.startswith("../") else path


def _round_half_up(value: float | None) -> int:
    return math.floor((value or 0) + 0.5)
