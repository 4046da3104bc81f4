"""probe() and sha256_file() against real generated media, plus the report model's contract."""
from __future__ import annotations

import hashlib
import subprocess

import imageio_ffmpeg
import pytest
from pydantic import ValidationError

from chalicelib.errors import MediaError
from chalicelib.media.probe import ProbeReport, StreamInfo, sha256_file
from media_worker.probe import probe
from proofline.clips import make_clip, make_corrupt, make_empty, make_still

MEDIA_REASONS = {"input_empty", "media_unreadable", "no_media_streams", "media_undecodable"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=2.0, width=320, height=240, fps=25)


def test_clip_probes_with_its_geometry_rate_audio_and_duration(clip):
    report = probe(clip)
    assert report.video is not None
    assert (report.video.width, report.video.height) == (320, 240)
    assert report.video.frame_rate == pytest.approx(25.0)
    assert report.video.codec == "h264"
    assert report.video.pix_fmt == "yuv420p"
    assert report.video.rotation == 0
    assert report.has_audio is True
    assert report.duration_s == pytest.approx(2.0, abs=0.1)
    assert report.size_bytes == clip.stat().st_size
    assert {s.type for s in report.streams} == {"video", "audio"}
    audio = next(s for s in report.streams if s.type == "audio")
    assert audio.codec == "aac" and audio.sample_rate == 44100 and audio.channels == 1


def test_audio_only_clip_has_no_video(tmp_path):
    report = probe(make_clip(tmp_path / "tone.m4a", seconds=1.0, video=False))
    assert report.video is None
    assert report.has_audio is True
    assert [s.type for s in report.streams] == ["audio"]
    assert report.duration_s == pytest.approx(1.0, abs=0.1)


def test_still_image_probes_as_one_video_stream(tmp_path):
    report = probe(make_still(tmp_path / "still.png", width=64, height=48))
    assert report.video is not None
    assert (report.video.width, report.video.height) == (64, 48)
    assert report.has_audio is False
    assert report.duration_s > 0


def test_empty_file_is_input_empty(tmp_path):
    with pytest.raises(MediaError) as err:
        probe(make_empty(tmp_path / "empty.mp4"))
    assert err.value.reason == "input_empty"


def test_random_bytes_are_unreadable(tmp_path):
    with pytest.raises(MediaError) as err:
        probe(make_corrupt(tmp_path / "noise.mp4"))
    assert err.value.reason == "media_unreadable"
    assert err.value.status == 422


def test_truncated_mp4_is_rejected(tmp_path, clip):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:2000])
    with pytest.raises(MediaError) as err:
        probe(truncated)
    assert err.value.reason in MEDIA_REASONS


def test_subtitle_only_file_has_no_media_streams(tmp_path):
    srt = tmp_path / "captions.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(MediaError) as err:
        probe(srt)
    assert err.value.reason == "no_media_streams"


def test_zeroed_video_payload_is_undecodable(tmp_path, clip):
    # Container intact, bitstream gone: only decoding a frame can tell.
    data = bytearray(clip.read_bytes())
    at = data.index(b"mdat")
    end = at - 4 + int.from_bytes(data[at - 4:at], "big")
    data[at + 4:end] = bytes(end - at - 4)
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(data)
    with pytest.raises(MediaError) as err:
        probe(zeroed)
    assert err.value.reason == "media_undecodable"


def test_display_matrix_rotation_is_reported(tmp_path, clip):
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-display_rotation", "90",
                    "-i", str(clip), "-c", "copy", str(rotated)], check=True, timeout=60)
    assert probe(rotated).video.rotation in (90, 270)


def test_clips_are_reproducible(tmp_path):
    first = make_clip(tmp_path / "a.mp4", seconds=0.5)
    second = make_clip(tmp_path / "b.mp4", seconds=0.5)
    assert sha256_file(first) == sha256_file(second)


def test_sha256_file_matches_hashlib(clip):
    digest = sha256_file(clip)
    assert digest.startswith("sha256:")
    assert digest == "sha256:" + hashlib.sha256(clip.read_bytes()).hexdigest()


def test_sha256_file_spans_chunks(tmp_path):
    big = make_corrupt(tmp_path / "big.bin", size=(1 << 20) * 2 + 7)
    assert sha256_file(big) == "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()


def test_report_round_trips_through_json(clip):
    report = probe(clip)
    assert ProbeReport.model_validate_json(report.model_dump_json()) == report


def _minimal_report(**overrides) -> dict:
    stream = StreamInfo(index=0, type="video", codec="h264", width=2, height=2).model_dump()
    body = {"format_name": "mp4", "duration_s": 1.0, "size_bytes": 10, "bit_rate": None,
            "streams": [stream], "video": stream, "has_audio": False}
    return body | overrides


def test_report_model_accepts_minimal_body():
    assert ProbeReport.model_validate(_minimal_report()).video.codec == "h264"


@pytest.mark.parametrize("overrides", [
    {"surprise": 1},
    {"streams": []},
    {"duration_s": 0},
    {"size_bytes": 0},
])
def test_report_model_rejects_bad_bodies(overrides):
    with pytest.raises(ValidationError):
        ProbeReport.model_validate(_minimal_report(**overrides))


def test_stream_model_rejects_extra_fields_and_unknown_types():
    with pytest.raises(ValidationError):
        StreamInfo(index=0, type="video", codec="h264", bogus=True)
    with pytest.raises(ValidationError):
        StreamInfo(index=0, type="hologram", codec="h264")
