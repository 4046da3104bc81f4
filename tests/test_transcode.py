"""Transcodes end to end on the local stack: split, segment tasks on the worker pool, every
segment verified against the source, the package assembled, checked and decoded."""
from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import imageio_ffmpeg
import m3u8
import pytest

from proofline import clips
from conftest import event_types, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    """640x480 at 25 fps, keyframes every 4 s, 6 s with a tone: two segments, two rungs."""
    return clips.make_gop_clip(media_dir / "source.mp4", seconds=6.0, gop=100, width=640,
                               height=480, fps=25)


def submit(api, path: Path, **fields) -> dict:
    slot = api.upload(path)
    job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                         "input_hash": slot["input_hash"], **fields},
                        idempotency_key=str(uuid.uuid4()))
    return job


def timeline(api, job_id: str) -> str:
    """The job's events, one line each with the facts a failure needs."""
    keep = ("reason", "checks", "measured", "message", "last")
    return "\n".join(f"{e['type']} {e.get('task') or ''} "
                     f"{json.dumps({k: v for k, v in e['data'].items() if k in keep})[:800]}"
                     for e in api.events(job_id)["events"])


def download_package(api, job_id: str, target: Path) -> Path:
    import urllib.request
    package = api.package(job_id)
    for f in package["files"]:
        path = target / f["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(f["download_url"]) as response:
            path.write_bytes(response.read())
    return target / package["entry"]


def test_a_transcode_produces_a_verified_playable_hls_ladder(api, source, tmp_path):
    job = submit(api, source, profile="hls-abr")
    final = wait_for(api, job["job_id"], timeout=180)
    assert final["state"] == "settled", timeline(api, job["job_id"])
    plan = final["plan"]
    assert [r["name"] for r in plan["renditions"]] == ["480p", "360p"]      # never upscaled
    assert len(plan["segments"]) == 2 and plan["split"]["method"] == "copy"
    events = api.events(job["job_id"])["events"]
    verified = [e for e in events if e["type"] == "segment.verified"]
    assert len(verified) == 2 * 2 + 1                                     # + the audio track
    video = [e for e in verified if e["data"]["rendition"]]
    assert all(e["data"]["measured"]["ssim_min"] >= 0.8 for e in video)
    assert {e["data"]["checks"]["starts_on_keyframe"] for e in video} == {True}
    types = event_types(api, job["job_id"])
    assert types.index("segments.planned") < types.index("validation.passed")

    master = download_package(api, job["job_id"], tmp_path / "pkg")
    parsed = m3u8.load(str(master))
    assert parsed.is_variant and len(parsed.playlists) == 2
    assert {p.stream_info.resolution for p in parsed.playlists} == {(640, 480), (480, 360)}
    assert all("avc1" in p.stream_info.codecs and "mp4a" in p.stream_info.codecs
               for p in parsed.playlists)
    for playlist in parsed.playlists:
        media = m3u8.load(str(master.parent / playlist.uri))
        assert abs(sum(s.duration for s in media.segments) - 6.0) < 0.1
    decode = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(master),
                             "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert decode.returncode == 0 and decode.stderr == ""
