"""Transcode profiles: validated encoder settings, the renditions a source gets, and what a
job costs. ffmpeg_args turns them into ffmpeg argument lists.

Jobs name a profile; they never carry command strings. Every value that reaches an argument
list is a number or a member of a fixed set, checked when profiles.yaml loads. The only I/O
here is reading the YAML that ships beside this module.
"""
from __future__ import annotations

import math
import os
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from chalicelib.catalog import CATALOG_DIR, CatalogError
from chalicelib.errors import InputError, UnknownProfile

PROFILES_PATH = CATALOG_DIR / "profiles.yaml"

AAC_LC_CODECS = "mp4a.40.2"

_BYTES_PER_GB = Decimal(10) ** 9
_DAYS_PER_MONTH = 30
_MIN_KBPS = 100

# profile_idc and the constraint flags x264 writes into the SPS for each profile.
_H264_PROFILE_IDC = {"baseline": "42c0", "main": "4d40", "high": "6400"}


def _decimal_string(value: Any) -> Any:
    # A YAML float is already rounded in binary; money must be written as a string.
    if not isinstance(value, str):
        raise ValueError("must be a decimal string such as \"0.023\"")
    return value


_Kbps = Annotated[int, Strict(), Field(ge=_MIN_KBPS, le=100_000)]
_Dimension = Annotated[int, Strict(), Field(ge=2, le=16384, multiple_of=2)]
_Rate = Annotated[Decimal, BeforeValidator(_decimal_string), Field(ge=0, allow_inf_nan=False)]
H264Profile = Literal["baseline", "main", "high"]
H264Level = Literal["3.0", "3.1", "3.2", "4.0", "4.1", "4.2", "5.0", "5.1", "5.2"]
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                     "slower", "veryslow"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Rung(_Strict):
    width: _Dimension
    height: _Dimension
    video_bitrate_k: _Kbps
    maxrate_k: _Kbps
    bufsize_k: _Kbps
    h264_profile: H264Profile
    h264_level: H264Level


class Rendition(_Rung):
    """One rung: a landscape box `width`x`height` the source is fitted into, and its rates."""
    name: Annotated[str, Field(pattern=r"^[0-9]{3,4}p$")]

    @model_validator(mode="after")
    def _consistent(self) -> Rendition:
        if self.name != f"{self.height}p":
            raise ValueError(f"rendition {self.name} must be named {self.height}p")
        if self.width < self.height:
            raise ValueError(f"rendition {self.name}: the box is landscape (width >= height)")
        if not self.video_bitrate_k <= min(self.maxrate_k, self.bufsize_k):
            raise ValueError(f"rendition {self.name}: maxrate and bufsize must be >= the bitrate")
        return self


class PlannedRendition(_Rung):
    """A rung as encoded for one source: its real output size, always even."""
    name: Annotated[str, Field(pattern=r"^[0-9]{1,5}p$")]


class VideoEncoder(_Strict):
    codec: Literal["libx264"]
    preset: X264Preset
    threads: Annotated[int, Strict(), Field(ge=1, le=16)]
    pix_fmt: Literal["yuv420p"]
    scaler: Literal["bicubic", "bilinear", "lanczos", "area"]


class AudioEncoder(_Strict):
    codec: Literal["aac"]
    bitrate_k: Annotated[int, Strict(), Field(ge=32, le=320)]
    sample_rate: Literal[44100, 48000]
    channels: Literal[1, 2]


class Limits(_Strict):
    max_source_height: Annotated[int, Strict(), Field(ge=16, le=16384)]
    max_source_width: Annotated[int, Strict(), Field(ge=16, le=16384)]
    min_duration_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_duration_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_fps: Annotated[int, Strict(), Field(ge=1, le=120)]

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("min_duration_s must be below max_duration_s")
        if self.max_source_height > self.max_source_width:
            raise ValueError("max_source_height (the short side) exceeds max_source_width")
        return self


class Profile(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=64)]
    description: str
    container: Literal["hls", "mp4"]
    segment_s: Annotated[int, Strict(), Field(ge=1, le=20)] = 4
    video: VideoEncoder
    audio: AudioEncoder
    limits: Limits
    renditions: Annotated[tuple[Rendition, ...], Field(min_length=1, max_length=8)]

    @model_validator(mode="after")
    def _ladder_shape(self) -> Profile:
        heights = [r.height for r in self.renditions]
        if heights != sorted(set(heights), reverse=True):
            raise ValueError(f"profile {self.name}: renditions must be distinct, tallest first")
        if self.container == "mp4" and len(self.renditions) != 1:
            raise ValueError(f"profile {self.name}: an mp4 profile has exactly one rendition")
        return self


class TokenRates(_Strict):
    compute_per_megapixel_second: _Rate
    storage_per_gb_month: _Rate
    transfer_per_gb: _Rate


class Pricing(_Strict):
    currency: Literal["USD"]          # the reference the router ranks offers in
    compute_per_megapixel_second: _Rate
    storage_per_gb_month: _Rate
    retention_days: Annotated[int, Strict(), Field(ge=1, le=3650)]
    transfer_per_gb: _Rate
    # The same rates in each payment token an escrow job may be paid in, in its units.
    tokens: dict[str, TokenRates] = Field(default_factory=dict)

    def in_token(self, symbol: str) -> Pricing | None:
        """These rates in payment token `symbol` (None: the catalog does not price it)."""
        if symbol == self.currency:
            return self
        rates = self.tokens.get(symbol)
        if rates is None:
            return None
        # A copy, not a validated model: the reference currency is USD, this one is `symbol`.
        return self.model_copy(update={"currency": symbol, **rates.model_dump()})


class ProfileSet(_Strict):
    profiles: dict[str, Profile]
    pricing: Pricing

    @model_validator(mode="after")
    def _keyed_by_name(self) -> ProfileSet:
        for key, profile in self.profiles.items():
            if key != profile.name:
                raise ValueError(f"profile {key!r} is named {profile.name!r}")
        return self

    def get(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise UnknownProfile(f"unknown transcode profile {name!r}",
                                 details={"known": sorted(self.profiles)}) from None


class Quote(_Strict):
    profile: str
    currency: str
    duration_s: Decimal
    renditions: tuple[PlannedRendition, ...]
    estimated_output_bytes: int
    compute: Decimal
    storage: Decimal
    transfer: Decimal
    total: Decimal


def load_profiles(path: str | os.PathLike = PROFILES_PATH) -> ProfileSet:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"profiles file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"profiles file {path} is not a mapping")
    raw.pop("shared", None)  # only holds the anchors the profiles reference
    profiles = raw.get("profiles")
    if isinstance(profiles, dict):
        raw["profiles"] = {k: {"name": k, **v} if isinstance(v, dict) else v
                           for k, v in profiles.items()}
    try:
        return ProfileSet.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(f"profiles in {path} are invalid: {exc}") from exc


@lru_cache(maxsize=1)
def default_profiles() -> ProfileSet:
    return load_profiles()


def get_profile(name: str) -> Profile:
    return default_profiles().get(name)


# -- planning ---------------------------------------------------------------------------------
def display_size(width: int, height: int, rotation: int = 0) -> tuple[int, int]:
    """The frame as shown: ffmpeg autorotates, so a 90/270 rotation swaps the sides."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise InputError(f"source size {width}x{height} is not a frame size",
                         reason="invalid_dimensions")
    if not isinstance(rotation, int) or rotation % 90:
        raise InputError(f"rotation {rotation} is not a multiple of 90 degrees",
                         reason="unsupported_rotation")
    return (height, width) if rotation % 180 else (width, height)


def ladder(profile: Profile, source_width: int, source_height: int,
           rotation: int = 0) -> list[PlannedRendition]:
    """The rungs this source gets, each fitted into its box (turned for portrait sources)
    without ever upscaling; a source smaller than every rung gets one at its own size."""
    width, height = display_size(source_width, source_height, rotation)
    planned = []
    for rung in profile.renditions:
        box_w, box_h = (rung.width, rung.height) if width >= height else (rung.height, rung.width)
        scale = min(Fraction(box_w, width), Fraction(box_h, height))
        if scale > 1:
            continue
        out_w = min(_nearest_even(width * scale), _floor_even(min(width, box_w)))
        out_h = min(_nearest_even(height * scale), _floor_even(min(height, box_h)))
        planned.append(PlannedRendition(name=rung.name, width=out_w, height=out_h,
                                        **_rates(rung, 1)))
    if planned:
        return planned
    smallest = profile.renditions[-1]
    out_w, out_h = _floor_even(width), _floor_even(height)
    # Fewer pixels need fewer bits: the smallest rung's rates, scaled by area.
    area = Fraction(out_w * out_h, smallest.width * smallest.height)
    return [PlannedRendition(name=f"{min(out_w, out_h)}p", width=out_w, height=out_h,
                             **_rates(smallest, area))]


def _rates(rung: Rendition, area: Fraction) -> dict[str, Any]:
    scaled = lambda k: max(_MIN_KBPS, math.ceil(k * area))  # noqa: E731
    return {"video_bitrate_k": scaled(rung.video_bitrate_k), "maxrate_k": scaled(rung.maxrate_k),
            "bufsize_k": scaled(rung.bufsize_k), "h264_profile": rung.h264_profile,
            "h264_level": rung.h264_level}


def _nearest_even(value: Fraction) -> int:
    return max(2, 2 * math.floor(Fraction(value) / 2 + Fraction(1, 2)))


def _floor_even(value: int) -> int:
    return max(2, value - value % 2)


def output_fps(profile: Profile, source_fps: float | Fraction | int) -> Fraction:
    """The constant rate every rendition is encoded at: the source's, divided by the smallest
    whole number that brings it within the profile's limit (60 -> 30, 59.94 -> 29.97)."""
    try:
        fps = _fraction(source_fps)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        fps = Fraction(0)
    if not 0 < fps <= 1000:
        raise InputError(f"frame rate {source_fps!r} is not usable", reason="invalid_frame_rate")
    return fps / math.ceil(fps / profile.limits.max_fps)


def _fraction(value: float | Fraction | int) -> Fraction:
    if isinstance(value, float):
        # Probes report 30000/1001 as 29.97002997...; recover the rational rate.
        return Fraction(value).limit_denominator(1001)
    return Fraction(value)


def check_source(profile: Profile, *, duration_s: float, source_width: int, source_height: int,
                 rotation: int = 0) -> None:
    """Raise InputError when the profile does not take this source; the job fails for good."""
    width, height = display_size(source_width, source_height, rotation)
    limits = profile.limits
    short, long = sorted((width, height))
    if short > limits.max_source_height or long > limits.max_source_width:
        raise InputError(f"source {width}x{height} exceeds {limits.max_source_width}x"
                         f"{limits.max_source_height}", reason="source_too_large",
                         details={"width": width, "height": height})
    if not (isinstance(duration_s, (int, float)) and math.isfinite(duration_s)):
        raise InputError(f"duration {duration_s!r} is not a number", reason="invalid_duration")
    if duration_s < limits.min_duration_s:
        raise InputError(f"source lasts {duration_s}s, under {limits.min_duration_s}s",
                         reason="source_too_short", details={"duration_s": duration_s})
    if duration_s > limits.max_duration_s:
        raise InputError(f"source lasts {duration_s}s, over {limits.max_duration_s}s",
                         reason="source_too_long", details={"duration_s": duration_s})


# -- pricing ----------------------------------------------------------------------------------
def quote(profile: Profile, *, duration_s: float, source_width: int, source_height: int,
          source_bytes: int, rotation: int = 0, pricing: Pricing | None = None,
          places: int = 6) -> Quote:
    """Price a job before it runs, from the rates in profiles.yaml (see the formulas there).
    Each line item is rounded half-up to `places` decimals (a token's own precision when
    quoting in it) and the total is their exact sum."""
    check_source(profile, duration_s=duration_s, source_width=source_width,
                 source_height=source_height, rotation=rotation)
    if isinstance(source_bytes, bool) or not isinstance(source_bytes, int) or source_bytes < 0:
        raise InputError(f"source size {source_bytes!r} is not a byte count",
                         reason="invalid_source_size")
    pricing = pricing or default_profiles().pricing
    seconds = Decimal(repr(float(duration_s)))
    planned = ladder(profile, source_width, source_height, rotation)
    megapixels = sum(Decimal(r.width * r.height) for r in planned) / Decimal(10) ** 6
    kbps = sum(r.video_bitrate_k for r in planned) + profile.audio.bitrate_k
    output_bytes = int((Decimal(kbps) * 1000 * seconds / 8).to_integral_value(ROUND_CEILING))
    money = lambda value: value.quantize(Decimal(10) ** -places, rounding=ROUND_HALF_UP)  # noqa: E731
    compute = money(megapixels * seconds * pricing.compute_per_megapixel_second)
    storage = money(Decimal(source_bytes + output_bytes) / _BYTES_PER_GB
                    * pricing.storage_per_gb_month * pricing.retention_days / _DAYS_PER_MONTH)
    transfer = money(Decimal(output_bytes) / _BYTES_PER_GB * pricing.transfer_per_gb)
    return Quote(profile=profile.name, currency=pricing.currency, duration_s=seconds,
                 renditions=tuple(planned), estimated_output_bytes=output_bytes,
                 compute=compute, storage=storage, transfer=transfer,
                 total=compute + storage + transfer)


# -- codec strings ----------------------------------------------------------------------------
def codecs_string(rendition: Rendition | PlannedRendition | AudioEncoder) -> str:
    """The RFC 6381 string for HLS CODECS: avc1.PPCCLL from the SPS x264 writes, or AAC-LC."""
    if isinstance(rendition, AudioEncoder):
        return AAC_LC_CODECS
    level_idc = round(float(rendition.h264_level) * 10)
    return f"avc1.{_H264_PROFILE_IDC[rendition.h264_profile]}{level_idc:02x}"
