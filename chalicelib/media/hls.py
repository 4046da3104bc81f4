"""HLS playlists: write the VOD media and master playlists of a package, and check a finished
package against what the job asked for. Pure: strings and bytes in, strings and reports out.

Package layout: `master.m3u8`, `<rendition>/index.m3u8` with its segments beside it, and
`audio/audio.m3u8` for the one shared AAC group.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.media.profiles import AudioEncoder, PlannedRendition, Profile, codecs_string

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


