"""The check of an assembled HLS package: the master and every playlist parse, each names
only files inside the package, the renditions the plan promised are there with their
segments, and the durations add up; and what the package relies on instead of decoding
itself again: the verdicts its segment tasks were given, each from the bytes it delivers."""
from __future__ import annotations

import math
import posixpath
from typing import Any, Mapping, Sequence

import m3u8

from chalicelib.media.hls import MASTER
from chalicelib.verification.policies import Verdict


def check_package(files: Mapping[str, bytes | None], *, expected_duration_s: float,
                  tolerance_s: float, expected_segments: int | None = None) -> Verdict:
    """Check a package (relative path -> bytes) is complete and lasts what the source lasts.
    Structural: it reads the playlists only, so a file whose bytes it need not see (a
    segment, checked on its own and placed by its hash) may be given as None.

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


def task_verdicts(verdicts: Mapping[str, Mapping[str, Any] | None], *,
                  renditions: Mapping[str, Sequence[str]], audio_task: str | None) -> Verdict:
    """What the package takes from its segment checks instead of decoding itself again.

    `verdicts` holds, for each task, the verdict its passing attempt was given (the
    `segment.verified` event's data: policy, passed, checks, measured), or None when there
    is none; `renditions` the video tasks of each rendition, `audio_task` the audio track's
    task (None without audio). Every planned task must have passed its own check, and the
    segments of each rendition must hold, between them, exactly the frames their source
    segments have, as those checks counted them.
    """
    planned = [(task_id, "segment_video") for ids in renditions.values() for task_id in ids]
    if audio_task is not None:
        planned.append((audio_task, "segment_audio"))
    unverified = [task_id for task_id, policy in planned
                  if not (verdicts.get(task_id) or {}).get("passed")
                  or (verdicts.get(task_id) or {}).get("policy") != policy]
    checks = {"tasks_verified": not unverified}
    measured: dict[str, Any] = {"unverified_tasks": unverified[:20]}
    missing = set(unverified)
    relied = [verdicts[task_id] for task_id, _ in planned if task_id not in missing]
    video = [v for v in relied if v["policy"] == "segment_video"]
    # The video segments whose content (every frame, SSIM) was audited, the rest checked
    # for structure, frame count and bitrate.
    measured["task_verdicts"] = {
        "video": len(video), "audio": len(relied) - len(video),
        "content_audited": sum(bool(v.get("measured", {}).get("content_audited"))
                               for v in video)}
    counted: dict[str, dict[str, Any]] = {}
    for name, ids in renditions.items():
        seen = [(verdicts.get(task_id) or {}).get("measured", {}) for task_id in ids]
        counted[name] = {
            "frames": sum(int(m.get("frame_count") or 0) for m in seen),
            "frames_expected": sum(int(m.get("frames_expected") or 0) for m in seen),
            "duration_s": round(sum(float(m.get("duration_s") or 0) for m in seen), 6)}
    measured["renditions_measured"] = counted
    checks["frame_count_measured"] = all(c["frames"] == c["frames_expected"] > 0
                                         for c in counted.values())
    if audio_task is not None:
        measured["audio_duration_measured_s"] = (
            (verdicts.get(audio_task) or {}).get("measured", {}).get("duration_s"))
    return Verdict("task_verdicts", checks, measured)


def _parse(files: Mapping[str, bytes | None], path: str | None) -> m3u8.M3U8 | None:
    if path is None or files.get(path) is None:
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
