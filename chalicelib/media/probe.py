"""What a probe of a media input reports (a validated model the verifier checks), and the
sha256 helpers. The probing itself decodes with PyAV and lives in the execution plane
(`media_worker.probe`), so the control plane's package never imports it."""
from __future__ import annotations

import hashlib
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

StreamType = Literal["video", "audio", "subtitle", "data", "attachment", "unknown"]
_STREAM_TYPES = {"video", "audio", "subtitle", "data", "attachment"}
_CHUNK = 1 << 20


class StreamInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    index: int
    type: StreamType
    codec: str
    profile: str | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    pix_fmt: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    rotation: int = 0
    frames: int | None = None


class ProbeReport(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_name: str
    duration_s: float = Field(gt=0)
    size_bytes: int = Field(gt=0)
    bit_rate: int | None = None
    streams: list[StreamInfo] = Field(min_length=1)
    video: StreamInfo | None = None
    has_audio: bool


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        # Inputs can be gigabytes; a fixed chunk keeps memory flat in a small Lambda.
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


