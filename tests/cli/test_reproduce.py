"""`proofline jobs reproduce` against the session's stack: a settled transcode's segment,
encoded again here with the worker's own code, agrees with what was delivered; a delivered
segment swapped for another video (its listed hash rewritten to match) does not; the inputs
it reads are its client's and the operators' alone."""
from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
import uuid
from dataclasses import asdict
from pathlib import Path

import imageio_ffmpeg
import pytest
from conftest import run_cli, wait_for
from eth_account import Account

from chalicelib.aws.blobs import S3Uri
from chalicelib.identity.signing import did_for
from proofline import clips
from proofline.client import Api, ApiError

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def job(client_api, media_dir) -> dict:
    """640x480 at 25 fps, keyframes every 4 s, 5.5 s (a length no other test encodes: its
    outputs and package are this module's alone): two segments, two rungs and audio. The
    development client's, so the CLI reads it as that client."""
    clip = clips.make_gop_clip(media_dir / "reproduce.mp4", seconds=5.5, gop=100, width=640,
                               height=480, fps=25)
    slot = client_api.upload(clip)
    submitted, _ = client_api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                                      "input_hash": slot["input_hash"], "profile": "hls-abr"},
                                     idempotency_key=str(uuid.uuid4()))
    final = wait_for(client_api, submitted["job_id"], timeout=240)
    assert final["state"] == "settled", client_api.events(submitted["job_id"])
    assert [r["name"] for r in final["plan"]["renditions"]] == ["480p", "360p"]
    return final


@pytest.fixture(scope="module")
def here(stack, tmp_path_factory) -> Path:
    """A directory whose `.proofline/stack.json` names the session's stack."""
    cwd = tmp_path_factory.mktemp("reproduce")
    (cwd / ".proofline").mkdir()
    (cwd / ".proofline" / "stack.json").write_text(json.dumps(asdict(stack.info)))
    return cwd


def reproduce(here: Path, *args) -> subprocess.CompletedProcess:
    return run_cli(here, "jobs", "reproduce", *args, check=False)


def test_a_settled_transcode_is_reproduced_and_agrees(here, job):
    result = reproduce(here, job["job_id"], "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["agree"] is True and report["segment"] == 0
    assert report["template"]["matches"] is True
    assert report["ffmpeg"]["recorded"] == [report["ffmpeg"]["here"]]      # one build here
    rows = {r["rendition"]: r for r in report["renditions"]}
    assert set(rows) == {"480p", "360p"}
    for row in rows.values():
        assert row["verdict"] in ("identical", "agree") and row["failing"] == []
        assert row["renditions_in_run"] == row["recorded"]["renditions_in_run"] == 2
        if row["verdict"] == "agree":           # x264's threads: other bytes, same measures
            theirs, ours = row["delivered"], row["local"]
            assert theirs["passed"] and ours["passed"]
            assert theirs["measured"]["frame_count"] == ours["measured"]["frame_count"] == 100
            assert theirs["measured"]["ssim_frames"] == ours["measured"]["ssim_frames"]
            assert theirs["checks"]["every_frame_matches_source"] is True
    assert "-filter_complex" in report["command"]          # both renditions from one decode


def test_one_rendition_alone_prints_its_measures_side_by_side(here, job):
    result = reproduce(here, job["job_id"], "--segment", "1", "--rendition", "360p")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "360p (360p-00001)" in out and "480p" not in out.split("360p (")[1]
    assert "identical bytes" in out or ("delivered" in out and "here" in out
                                        and "every_frame_matches_source" in out
                                        and "SSIM min" in out)
    assert "-filter_complex" not in out and out.splitlines()[-1] == "agree"


def fake_segment(rendition: dict, start_s: float, target: Path, media_dir: Path) -> bytes:
    """A valid H.264 TS segment of another picture (colour bars), of the rendition's size,
    the segment's 4 s and its timestamps: only its content gives it away."""
    bars = clips.make_clip(media_dir / f"bars-{rendition['width']}.mp4", seconds=4.0,
                           width=rendition["width"], height=rendition["height"], fps=25,
                           audio=False, seed_pattern="smptebars")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(bars),
                    "-c:v", "libx264", "-profile:v", rendition["h264_profile"], "-g", "100",
                    "-bf", "0", "-b:v", f"{rendition['video_bitrate_k']}k", "-an",
                    "-output_ts_offset", str(start_s), "-muxdelay", "0", "-muxpreload", "0",
                    "-f", "mpegts", str(target)], check=True, timeout=60)
    return target.read_bytes()


def test_a_delivered_segment_swapped_with_its_listed_hash_disagrees(here, job, ports,
                                                                     media_dir, tmp_path):
    listing_uri = S3Uri.parse(job["outputs"][0]["uri"])
    prefix = listing_uri.key.rsplit("/", 1)[0]
    segment_uri = S3Uri(listing_uri.bucket, f"{prefix}/480p/seg_00000.ts")
    listing, segment = ports.blobs.read(listing_uri, 1 << 20), ports.blobs.read(segment_uri,
                                                                                 1 << 30)
    rendition = job["plan"]["renditions"][0]
    fake = fake_segment(rendition, job["plan"]["segments"][0]["start_s"],
                        tmp_path / "fake.ts", media_dir)
    altered = json.loads(listing)
    [entry] = [f for f in altered["files"] if f["path"] == "480p/seg_00000.ts"]
    entry.update(sha256="sha256:" + hashlib.sha256(fake).hexdigest(), size_bytes=len(fake))
    ports.blobs.put(segment_uri, fake, content_type="video/mp2t")
    ports.blobs.put(listing_uri, json.dumps(altered, indent=1, sort_keys=True).encode(),
                    content_type="application/json")
    try:
        result = reproduce(here, job["job_id"], "--json")
        shown = reproduce(here, job["job_id"], "--rendition", "480p")
    finally:        # content-addressed: put back exactly what was verified
        ports.blobs.put(segment_uri, segment, content_type="video/mp2t")
        ports.blobs.put(listing_uri, listing, content_type="application/json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rows = {r["rendition"]: r for r in report["renditions"]}
    swapped = rows["480p"]
    assert report["agree"] is False and swapped["verdict"] == "disagree"
    # Its bytes are what the (rewritten) listing says; its picture is not the source's, and
    # the listing no longer names what the segment's check verified.
    assert swapped["delivered"]["checks"]["sha256_matches"] is True
    assert {"every_frame_matches_source", "listed_as_verified"} <= set(swapped["failing"])
    assert swapped["local"]["checks"]["every_frame_matches_source"] is True
    assert rows["360p"]["verdict"] in ("identical", "agree")
    assert shown.returncode == 1
    assert "disagree" in shown.stdout and "every_frame_matches_source" in shown.stdout


def test_the_inputs_are_the_clients_and_the_operators_alone(stack, job, client_api, api):
    owned = client_api.inputs(job["job_id"])
    assert [s["index"] for s in owned["segments"]] == [0, 1]
    for link, planned in zip(owned["segments"], job["plan"]["segments"]):
        assert (link["sha256"], link["start_s"], link["duration_s"]) == (
            planned["sha256"], planned["start_s"], planned["duration_s"])
        with urllib.request.urlopen(link["url"]) as response:
            assert "sha256:" + hashlib.sha256(response.read()).hexdigest() == link["sha256"]
    source = owned["source"]
    assert source["sha256"] == job["manifest"]["input_hash"]
    with urllib.request.urlopen(source["url"]) as response:
        assert "sha256:" + hashlib.sha256(response.read()).hexdigest() == source["sha256"]
    assert [s["sha256"] for s in api.inputs(job["job_id"])["segments"]] == [
        s["sha256"] for s in owned["segments"]]                          # an operator's too
    account = Account.create()
    stranger = Api(stack.info.api_url,
                   signer=(account, did_for(account.address, stack.info.chain_id)))
    with pytest.raises(ApiError) as refused:
        stranger.inputs(job["job_id"])
    assert (refused.value.status, refused.value.reason) == (404, "job_not_found")


def test_an_unknown_segment_or_rendition_is_a_usage_error(here, job):
    missing = reproduce(here, job["job_id"], "--segment", "99")
    assert missing.returncode == 2 and "no segment 99" in missing.stderr
    assert "0 to 1" in missing.stderr
    wrong = reproduce(here, job["job_id"], "--rendition", "1080p")
    assert wrong.returncode == 2 and "1080p" in wrong.stderr and "480p, 360p" in wrong.stderr


def test_a_job_that_is_not_a_transcode_is_refused(here, client_api, clip):
    slot = client_api.upload(clip)
    probe, _ = client_api.submit({"kind": "media_probe", "input_uri": slot["input_uri"]},
                                 idempotency_key=str(uuid.uuid4()))
    wait_for(client_api, probe["job_id"], timeout=90)
    refused = reproduce(here, probe["job_id"])
    assert refused.returncode == 4 and "no transcode plan" in refused.stderr
    assert client_api.inputs(probe["job_id"])["segments"] == []
