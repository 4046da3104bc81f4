"""HLS playlists: writing media and master playlists, and checking a finished package."""
from __future__ import annotations

from fractions import Fraction

import m3u8
import pytest

from chalicelib.media import hls
from chalicelib.media.hls import AudioGroup, audio_group, master_playlist, media_playlist, variant
from chalicelib.media.profiles import get_profile, ladder
from chalicelib.verification.package import check_package, task_verdicts
from chalicelib.verification.policies import Verdict


# -- media playlists --------------------------------------------------------------------------
def test_media_playlist_text():
    text = media_playlist([("seg_00000.ts", 4.0), ("seg_00001.ts", 1.5)])
    assert text == ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n"
                    "#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n"
                    "#EXTINF:4.000000,\nseg_00000.ts\n#EXTINF:1.500000,\nseg_00001.ts\n"
                    "#EXT-X-ENDLIST\n")


def test_media_playlist_round_trips():
    segments = [("seg_00000.ts", 4.004), ("seg_00001.ts", 4.004), ("seg_00002.ts", 0.333667)]
    parsed = m3u8.loads(media_playlist(segments))
    assert not parsed.is_variant and parsed.is_endlist
    assert (parsed.version, parsed.media_sequence, parsed.playlist_type) == (3, 0, "vod")
    assert parsed.target_duration == 5           # ceil(4.004)
    assert [(s.uri, s.duration) for s in parsed.segments] == segments


def test_target_duration():
    assert "#EXT-X-TARGETDURATION:6\n" in media_playlist([("a.ts", 4.0)], target_duration=6)
    with pytest.raises(ValueError):
        media_playlist([("a.ts", 4.5)], target_duration=4)


@pytest.mark.parametrize("segments", [[], [("a.ts", 0.0)], [("a.ts", float("nan"))],
                                      [("a.ts\n#EXT-X-ENDLIST", 4.0)], [("", 4.0)]])
def test_media_playlist_rejects(segments):
    with pytest.raises(ValueError):
        media_playlist(segments)


# -- master playlists -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def abr():
    return get_profile("hls-abr")


def test_master_playlist_round_trips(abr):
    fps = Fraction(30000, 1001)
    variants = [variant(r, fps=fps) for r in ladder(abr, 1920, 1080)]
    parsed = m3u8.loads(master_playlist(variants, audio=audio_group(abr)))
    assert parsed.is_variant
    assert [p.uri for p in parsed.playlists] == ["1080p/index.m3u8", "720p/index.m3u8",
                                                 "480p/index.m3u8", "360p/index.m3u8"]
    top = parsed.playlists[0].stream_info
    assert top.bandwidth == (5350 + 128) * 1000
    assert top.average_bandwidth == (5000 + 128) * 1000
    assert top.resolution == (1920, 1080)
    assert top.codecs == "avc1.640028,mp4a.40.2"
    assert top.frame_rate == pytest.approx(29.97)
    assert top.audio == "aac"
    assert parsed.playlists[1].stream_info.codecs == "avc1.4d401f,mp4a.40.2"
    [media] = parsed.media
    assert (media.type, media.group_id, media.name, media.uri) == ("AUDIO", "aac", "audio",
                                                                   "audio/audio.m3u8")
    assert (media.default, media.autoselect) == ("YES", "YES")


def test_master_playlist_audio_line(abr):
    text = master_playlist([variant(ladder(abr, 1280, 720)[0], fps=25)], audio=audio_group(abr))
    assert ('#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
            'CHANNELS="2",URI="audio/audio.m3u8"\n') in text
    assert ("#EXT-X-STREAM-INF:BANDWIDTH=3124000,AVERAGE-BANDWIDTH=2928000,"
            'RESOLUTION=1280x720,CODECS="avc1.4d401f,mp4a.40.2",FRAME-RATE=25.000,AUDIO="aac"\n'
            "720p/index.m3u8\n") in text


def test_master_playlist_without_audio(abr):
    parsed = m3u8.loads(master_playlist([variant(ladder(abr, 640, 360)[0], fps=25)], audio=None))
    info = parsed.playlists[0].stream_info
    assert (info.bandwidth, info.codecs, info.audio) == (856_000, "avc1.4d401e", None)
    assert len(parsed.media) == 0


def test_master_playlist_needs_variants():
    with pytest.raises(ValueError):
        master_playlist([], audio=None)


# -- checking a package -----------------------------------------------------------------------
DURATIONS = [4.0, 4.0, 2.0]


def package(abr, names=("720p", "360p")) -> dict[str, bytes]:
    planned = [r for r in ladder(abr, 1280, 720) if r.name in names]
    files = {hls.MASTER: master_playlist([variant(r, fps=25) for r in planned],
                                         audio=audio_group(abr)).encode()}
    for folder, playlist in [*((r.name, "index.m3u8") for r in planned), ("audio", "audio.m3u8")]:
        segments = [(f"seg_{i:05d}.ts", d) for i, d in enumerate(DURATIONS)]
        files[f"{folder}/{playlist}"] = media_playlist(segments).encode()
        files.update({f"{folder}/{uri}": b"\x47" * 188 for uri, _ in segments})
    return files


def check(files, **kwargs):
    return check_package(files, **{"expected_duration_s": 10.0, "tolerance_s": 0.1,
                                   "expected_segments": 3, **kwargs})


def test_complete_package_passes(abr):
    report = check(package(abr))
    assert report.passed and report.reason is None, report.checks
    assert report.measured["renditions"]["720p/index.m3u8"] == {"segments": 3, "duration_s": 10.0}
    assert report.measured["audio"] == ["audio/audio.m3u8"]


def test_the_report_is_a_verdict(abr):
    report = check(package(abr))
    assert isinstance(report, Verdict) and report.policy == "hls_package"
    assert report.as_event()["passed"] is True


def test_missing_segment(abr):
    files = package(abr)
    del files["360p/seg_00001.ts"]
    report = check(files)
    assert not report.passed and report.reason == "check_failed:segments_present"
    assert report.measured["missing_segments"] == ["360p/seg_00001.ts"]


def test_missing_audio_segment(abr):
    files = package(abr)
    del files["audio/seg_00002.ts"]
    assert check(files).reason == "check_failed:segments_present"


def test_missing_variant_playlist(abr):
    files = package(abr)
    del files["720p/index.m3u8"]
    report = check(files)
    assert report.reason == "check_failed:playlists_present"
    assert report.measured["missing_playlists"] == ["720p/index.m3u8"]


def test_missing_master(abr):
    files = package(abr)
    del files[hls.MASTER]
    assert check(files).reason == "check_failed:master_present"


def test_master_that_is_not_a_playlist(abr):
    files = package(abr)
    files[hls.MASTER] = b"\xff\xfe not text"
    assert check(files).reason == "check_failed:master_is_variant"


def test_wrong_total_duration(abr):
    report = check(package(abr), expected_duration_s=12.0)
    assert report.reason == "check_failed:duration"
    assert report.measured["renditions"]["360p/index.m3u8"]["duration_s"] == 10.0
    assert check(package(abr), expected_duration_s=10.09).passed


def test_wrong_segment_count(abr):
    assert check(package(abr), expected_segments=4).reason == "check_failed:segment_count"
    assert "segment_count" not in check(package(abr), expected_segments=None).checks


def test_variant_without_codecs(abr):
    files = package(abr)
    files[hls.MASTER] = files[hls.MASTER].replace(b',CODECS="avc1.4d401e,mp4a.40.2"', b"")
    assert check(files).reason == "check_failed:variant_attributes"


def test_playlist_without_endlist(abr):
    files = package(abr)
    files["720p/index.m3u8"] = files["720p/index.m3u8"].replace(b"#EXT-X-ENDLIST\n", b"")
    assert check(files).reason == "check_failed:endlist"


def test_segment_outside_the_package(abr):
    files = package(abr)
    files["720p/index.m3u8"] = files["720p/index.m3u8"].replace(b"seg_00000.ts",
                                                                b"../../etc/seg_00000.ts")
    files["../etc/seg_00000.ts"] = b"x"
    assert check(files).reason == "check_failed:segments_present"


def test_segment_longer_than_target(abr):
    files = package(abr)
    files["720p/index.m3u8"] = files["720p/index.m3u8"].replace(b"#EXTINF:2.000000",
                                                                b"#EXTINF:4.600000")
    report = check(files, tolerance_s=5.0)
    assert report.reason == "check_failed:target_duration"


def test_segments_are_not_read(abr):
    """The check reads playlists only: segments placed by their hash may come without bytes."""
    files = {path: None if path.endswith(".ts") else data
             for path, data in package(abr).items()}
    assert check(files).passed
    del files["360p/seg_00001.ts"]
    assert check(files).reason == "check_failed:segments_present"
    files = package(abr)
    files["720p/index.m3u8"] = None
    assert check(files).reason == "check_failed:playlists_present"


# -- the segment verdicts a package relies on -------------------------------------------------
VIDEO_TASKS = {"720p": ["720p-00000", "720p-00001"], "360p": ["360p-00000", "360p-00001"]}


def recorded() -> dict:
    def passed(policy, **measured):
        return {"policy": policy, "passed": True, "checks": {}, "measured": measured}
    verdicts = {task: passed("segment_video", frame_count=100, frames_expected=100,
                             duration_s=4.0, content_audited=task.endswith("0"))
                for tasks in VIDEO_TASKS.values() for task in tasks}
    verdicts["audio"] = passed("segment_audio", duration_s=8.02)
    return verdicts


def test_the_package_relies_on_every_task_verdict():
    report = task_verdicts(recorded(), renditions=VIDEO_TASKS, audio_task="audio")
    assert report.passed, report.checks
    assert report.measured["task_verdicts"] == {"video": 4, "audio": 1, "content_audited": 2}
    assert report.measured["renditions_measured"]["720p"] == {
        "frames": 200, "frames_expected": 200, "duration_s": 8.0}
    assert report.measured["audio_duration_measured_s"] == 8.02
    without_audio = recorded()
    del without_audio["audio"]
    assert task_verdicts(without_audio, renditions=VIDEO_TASKS, audio_task=None).passed


@pytest.mark.parametrize("change", ["missing", "failed", "another_policy", "no_audio"])
def test_a_task_without_its_passing_verdict_fails_the_package(change):
    verdicts = recorded()
    if change == "missing":
        verdicts["360p-00001"] = None
    elif change == "failed":
        verdicts["360p-00001"]["passed"] = False
    elif change == "another_policy":
        verdicts["360p-00001"]["policy"] = "segment_audio"
    else:
        del verdicts["audio"]
    report = task_verdicts(verdicts, renditions=VIDEO_TASKS, audio_task="audio")
    assert report.reason == "check_failed:tasks_verified"
    assert report.measured["unverified_tasks"] == ["audio" if change == "no_audio"
                                                   else "360p-00001"]


def test_frames_the_checks_counted_must_add_up():
    verdicts = recorded()
    verdicts["720p-00001"]["measured"]["frame_count"] = 99
    report = task_verdicts(verdicts, renditions=VIDEO_TASKS, audio_task="audio")
    assert report.reason == "check_failed:frame_count_measured"
    assert report.measured["renditions_measured"]["720p"]["frames"] == 199


def test_audio_group_defaults(abr):
    group = audio_group(abr)
    assert group == AudioGroup(bitrate_bps=128_000, channels=2, codecs="mp4a.40.2")
    assert group.uri == hls.AUDIO_PLAYLIST == "audio/audio.m3u8"
