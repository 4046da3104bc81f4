"""`proofline transcode` as a user runs it: quote a local file, then transcode it on a stack of
the test's own and get a playable, hash-checked HLS package on disk."""
import json
import subprocess
from decimal import Decimal
from pathlib import Path

import imageio_ffmpeg
import m3u8
import pytest
from conftest import run_cli as run

from proofline import clips

pytestmark = pytest.mark.stack

# Shared by the submissions that expect the same job (same manifest too, or the API refuses
# the key), so each test passes on its own and whichever runs second downloads the first's job.
SAME_JOB = "transcode-cli-source"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """640x480 at 25 fps with a keyframe every 4 s: two segments, two rungs and audio."""
    cwd = tmp_path_factory.mktemp("transcode-cli")
    clips.make_gop_clip(cwd / "source.mp4", seconds=5.0, gop=100, width=640, height=480, fps=25)
    clips.make_empty(cwd / "empty.mp4")
    return cwd


@pytest.fixture(scope="module")
def stack(workdir):
    run(workdir, "dev", "up")
    yield workdir
    run(workdir, "dev", "down", check=False)


def decodes(entry: Path) -> subprocess.CompletedProcess:
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(entry),
                           "-f", "null", "-"], capture_output=True, text=True, timeout=120)


def test_submit_downloads_a_verified_playable_package(stack):
    result = run(stack, "transcode", "submit", "--input", "source.mp4", "--profile", "hls-abr",
                 "--output", "dist/video-001", "--idempotency-key", SAME_JOB, "--json")
    summary = json.loads(result.stdout)
    out = stack / "dist" / "video-001"
    assert summary["state"] == "settled" and summary["reason"] is None
    assert Path(summary["output_dir"]) == out and Path(summary["entry"]) == out / "master.m3u8"
    on_disk = [f for f in out.rglob("*") if f.is_file()]
    assert summary["files"] == len(on_disk) and summary["bytes"] == sum(f.stat().st_size
                                                                      for f in on_disk)
    assert not any(f.suffix == ".part" for f in on_disk)

    master = m3u8.load(summary["entry"])
    assert master.is_variant and len(master.playlists) == len(summary["renditions"]) == 2
    for playlist in [*master.playlists, *master.media]:
        media = m3u8.load(str(out / playlist.uri))
        assert len(media.segments) == summary["segments"] == 2
        assert all((out / playlist.uri).parent.joinpath(s.uri).is_file() for s in media.segments)
    decode = decodes(out / "master.m3u8")
    assert decode.returncode == 0 and decode.stderr == ""


def test_submit_without_json_shows_where_the_package_is(stack):
    result = run(stack, "transcode", "submit", "--input", "source.mp4", "--profile", "hls-abr",
                 "--output", "dist/video-002", "--idempotency-key", SAME_JOB)
    assert "dist/video-002/master.m3u8" in result.stdout
    assert "480p (640x480)" in result.stdout and "360p (480x360)" in result.stdout
    assert (stack / "dist" / "video-002" / "480p" / "seg_00001.ts").is_file()


def test_a_source_the_pipeline_refuses_fails_with_its_reason(stack):
    result = run(stack, "transcode", "submit", "--input", "empty.mp4", "--output", "dist/empty",
                 "--json", check=False)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert (summary["state"], summary["reason"]) == ("failed", "input_empty")
    assert summary["entry"] is None and summary["files"] == 0
    assert "input_empty" in result.stderr
    assert not (stack / "dist" / "empty").exists()


def test_an_unknown_profile_is_refused_by_the_api(stack):
    result = run(stack, "transcode", "submit", "--input", "source.mp4", "--profile", "nope",
                 "--output", "dist/nope", check=False)
    assert result.returncode != 0 and "unknown_profile" in result.stderr


def test_a_timeout_exits_5_and_says_the_job_goes_on(stack):
    result = run(stack, "transcode", "submit", "--input", "source.mp4", "--output", "dist/late",
                 "--idempotency-key", "transcode-cli-late", "--timeout", "0", "--json",
                 check=False)
    assert result.returncode == 5
    assert "still" in result.stderr and "proofline jobs watch" in result.stderr


def test_quote_prices_the_ladder_this_source_gets(workdir):
    quote = json.loads(run(workdir, "transcode", "quote", "--input", "source.mp4",
                           "--profile", "hls-abr", "--json").stdout)
    assert [r["name"] for r in quote["renditions"]] == ["480p", "360p"]       # never upscaled
    assert [(r["width"], r["height"]) for r in quote["renditions"]] == [(640, 480), (480, 360)]
    items = [Decimal(quote[k]) for k in ("compute", "storage", "transfer")]
    assert Decimal(quote["total"]) == sum(items) and Decimal(quote["total"]) > 0
    assert quote["currency"] == "USD" and quote["source"]["duration_s"] == pytest.approx(5.0)

    table = run(workdir, "transcode", "quote", "--input", "source.mp4").stdout
    assert quote["total"] in table and "480x360" in table


def test_quote_of_an_empty_file_names_the_reason(workdir):
    result = run(workdir, "transcode", "quote", "--input", "empty.mp4", check=False)
    assert result.returncode == 1 and "input_empty" in result.stderr


def test_quote_of_an_unknown_profile_lists_the_known_ones(workdir):
    result = run(workdir, "transcode", "quote", "--input", "source.mp4", "--profile", "nope",
                 check=False)
    assert result.returncode == 1
    assert "unknown_profile" in result.stderr and "hls-abr" in result.stderr


def test_a_quote_in_the_stablecoin_is_what_an_escrow_job_is_charged(stack):
    quoted = json.loads(run(stack, "transcode", "quote", "--input", "source.mp4", "--profile",
                            "hls-abr", "--token", "PUSD", "--json").stdout)["charge"]
    assert quoted["symbol"] == "PUSD" and quoted["decimals"] == 6
    assert Decimal(quoted["price"]) > 0 and quoted["renditions"] == ["480p", "360p"]
    paid = run(stack, "transcode", "submit", "--input", "source.mp4", "--output", "dist/paid",
               "--profile", "hls-abr", "--payment-policy", "escrow_before_start",
               "--max-price", "1", "--payment-token", "PUSD", "--json")
    job = json.loads(paid.stdout)
    shown = json.loads(run(stack, "jobs", "show", job["job_id"], "--json").stdout)
    assert shown["state"] == "settled"
    # The probe the pool made of the file agrees with the local one: quote = charge.
    assert shown["payment"]["charged"] == quoted["price"]
    assert Decimal(shown["payment"]["refunded"]) == 1 - Decimal(quoted["price"])


def test_an_inference_quote_and_a_price_over_the_ceiling(stack):
    quoted = json.loads(run(stack, "infer", "quote", "embed_batch", "--texts", "100", "--token",
                            "PUSD", "--json").stdout)
    assert quoted["price"] == "0.000115" and quoted["price_units"] == 115
    refused = run(stack, "infer", "quote", "embed_batch", "--token", "DOGE", check=False)
    assert refused.returncode != 0 and "unknown_payment_token" in refused.stderr


def test_submit_cuts_the_source_here_unless_told_not_to(stack):
    plans = {}
    for flag in ("--split", "--no-split"):
        result = run(stack, "transcode", "submit", "--input", "source.mp4", "--output",
                     f"dist/cut{flag}", "--idempotency-key", f"cut{flag}", flag, "--json")
        summary = json.loads(result.stdout)
        assert summary["state"] == "settled"
        shown = json.loads(run(stack, "jobs", "show", summary["job_id"], "--json").stdout)
        plans[flag] = shown["plan"]
    assert plans["--split"]["split"]["method"] == "client"
    assert plans["--no-split"]["split"]["method"] == "copy"
    # Cut here or there, the same segments of the same source (the bytes differ: a Matroska
    # file carries an id of its own).
    assert [(s["start_s"], s["duration_s"]) for s in plans["--split"]["segments"]] == \
        [(s["start_s"], s["duration_s"]) for s in plans["--no-split"]["segments"]]
    assert len(plans["--split"]["segments"]) == 2
