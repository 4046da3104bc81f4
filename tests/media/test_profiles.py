"""Transcode profiles: the shipped YAML, validation of profile files, ladder planning, quotes,
and the ffmpeg argument lists built from them (checked once against the real ffmpeg binary)."""
from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from fractions import Fraction

import av
import imageio_ffmpeg
import pytest
import yaml

from chalicelib.catalog import CatalogError
from chalicelib.errors import InputError, UnknownProfile
from chalicelib.media import ffmpeg_args, profiles
from chalicelib.media.ffmpeg_args import (
    audio_args,
    command_template,
    mp4_mux_args,
    raw_ladder_args,
    video_segment_args,
)
from chalicelib.media.profiles import (
    PROFILES_PATH,
    PlannedRendition,
    codecs_string,
    get_profile,
    ladder,
    load_profiles,
    output_fps,
    quote,
)
from proofline.clips import make_clip


@pytest.fixture(scope="module")
def abr():
    return get_profile("hls-abr")


def sizes(planned: list[PlannedRendition]) -> list[tuple[int, int]]:
    return [(r.width, r.height) for r in planned]


def value_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# -- shipped profiles -------------------------------------------------------------------------
def test_shipped_profiles():
    shipped = profiles.default_profiles()
    assert sorted(shipped.profiles) == ["hls-720p", "hls-abr", "mp4-1080p"]
    abr = shipped.get("hls-abr")
    assert [r.name for r in abr.renditions] == ["1080p", "720p", "480p", "360p"]
    assert [r.height for r in abr.renditions] == [1080, 720, 480, 360]
    assert [r.name for r in shipped.get("hls-720p").renditions] == ["720p"]
    mp4 = shipped.get("mp4-1080p")
    assert mp4.container == "mp4" and [r.name for r in mp4.renditions] == ["1080p"]
    for profile in shipped.profiles.values():
        assert profile.segment_s == 4
        assert (profile.video.codec, profile.video.preset, profile.video.threads,
                profile.video.pix_fmt) == ("libx264", "veryfast", 2, "yuv420p")
        assert (profile.audio.codec, profile.audio.bitrate_k, profile.audio.sample_rate,
                profile.audio.channels) == ("aac", 128, 48000, 2)
        for r in profile.renditions:
            assert r.video_bitrate_k < r.maxrate_k <= r.bufsize_k
    assert shipped.pricing.currency == "USD"
    assert isinstance(shipped.pricing.storage_per_gb_month, Decimal)


def test_default_profiles_are_cached():
    assert profiles.default_profiles() is profiles.default_profiles()


def test_unknown_profile():
    with pytest.raises(UnknownProfile) as info:
        get_profile("hls-8k")
    err = info.value
    assert (err.status, err.reason) == (400, "unknown_profile")
    assert err.details == {"known": ["hls-720p", "hls-abr", "mp4-1080p"]}


# -- profile files ----------------------------------------------------------------------------
def shipped_raw() -> dict:
    return yaml.safe_load(PROFILES_PATH.read_text())


def write(tmp_path, raw: dict):
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_copy_of_shipped_profiles_loads(tmp_path):
    assert load_profiles(write(tmp_path, shipped_raw())) == profiles.default_profiles()


def _rung(raw, index=0):
    return raw["profiles"]["hls-abr"]["renditions"][index]


@pytest.mark.parametrize("change", [
    lambda raw: raw["profiles"]["hls-abr"]["video"].update(preset="veryfast; rm -rf /"),
    lambda raw: raw["profiles"]["hls-abr"]["video"].update(preset="veryfast -vf drawtext"),
    lambda raw: raw["profiles"]["hls-abr"]["video"].update(threads="2"),
    lambda raw: raw["profiles"]["hls-abr"]["video"].update(codec="libx265"),
    lambda raw: raw["profiles"]["hls-abr"]["video"].update(extra_args="-vf x"),
    lambda raw: raw["profiles"]["hls-abr"]["audio"].update(bitrate_k="128k"),
    lambda raw: _rung(raw).update(video_bitrate_k="-1"),
    lambda raw: _rung(raw).update(video_bitrate_k=-1),
    lambda raw: _rung(raw).update(video_bitrate_k=True),
    lambda raw: _rung(raw).update(maxrate_k=4000),            # under the bitrate
    lambda raw: _rung(raw).update(h264_level=4.0),            # must be the string "4.0"
    lambda raw: _rung(raw).update(h264_profile="high10"),
    lambda raw: _rung(raw).update(width=1921),                # odd
    lambda raw: _rung(raw).update(name="hd"),
    lambda raw: _rung(raw).update(name="1080p; ls"),
    lambda raw: _rung(raw, 1).update(name="1080p", height=1080),   # not strictly descending
    lambda raw: raw["profiles"]["mp4-1080p"]["renditions"].append(_rung(raw, 1)),
    lambda raw: raw["profiles"]["hls-abr"].update(container="mkv"),
    lambda raw: raw["profiles"]["hls-abr"].update(segment_s=0),
    lambda raw: raw["profiles"]["hls-abr"].update(renditions=[]),
    lambda raw: raw["profiles"]["hls-abr"]["limits"].update(min_duration_s=20000),
    lambda raw: raw["profiles"].update({"Bad Name": raw["profiles"]["hls-720p"]}),
    lambda raw: raw["pricing"].update(transfer_per_gb=0.09),  # a float is not money
    lambda raw: raw["pricing"].update(transfer_per_gb="-0.09"),
    lambda raw: raw["pricing"].update(transfer_per_gb="NaN"),
    lambda raw: raw["pricing"].update(currency="EUR"),
    lambda raw: raw["pricing"]["tokens"]["PUSD"].update(transfer_per_gb="-1"),
    lambda raw: raw["pricing"]["tokens"]["PUSD"].pop("compute_per_megapixel_second"),
    lambda raw: raw.pop("pricing"),
])
def test_invalid_profile_file_is_a_catalog_error(tmp_path, change):
    raw = shipped_raw()
    change(raw)
    with pytest.raises(CatalogError) as info:
        load_profiles(write(tmp_path, raw))
    assert info.value.reason == "catalog_invalid"


def test_unparsable_profile_file(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles: [unclosed\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_profiles(path)


# -- ladder -----------------------------------------------------------------------------------
def test_full_hd_source_gets_every_rung(abr):
    planned = ladder(abr, 1920, 1080)
    assert [r.name for r in planned] == ["1080p", "720p", "480p", "360p"]
    assert sizes(planned) == [(1920, 1080), (1280, 720), (854, 480), (640, 360)]
    assert planned[0].video_bitrate_k == 5000 and planned[0].h264_level == "4.0"


def test_no_upscaling(abr):
    assert sizes(ladder(abr, 1280, 720)) == [(1280, 720), (854, 480), (640, 360)]
    assert [r.name for r in ladder(abr, 1000, 500)] == ["480p", "360p"]


def test_source_smaller_than_every_rung(abr):
    [only] = ladder(abr, 320, 240)
    assert (only.name, only.width, only.height) == ("240p", 320, 240)
    smallest = abr.renditions[-1]
    assert 100 <= only.video_bitrate_k < smallest.video_bitrate_k
    assert only.video_bitrate_k <= only.maxrate_k <= only.bufsize_k
    assert (only.h264_profile, only.h264_level) == (smallest.h264_profile, smallest.h264_level)


@pytest.mark.parametrize("width,height", [(1919, 1079), (1921, 1081), (1920, 1079), (1441, 1080),
                                          (321, 241), (333, 187), (1, 1), (4095, 2161),
                                          (719, 1279)])
def test_output_dimensions_are_even_and_never_larger(abr, width, height):
    planned = ladder(abr, width, height)
    assert planned
    for r in planned:
        assert r.width % 2 == 0 and r.height % 2 == 0
        assert r.width <= max(width, 2) and r.height <= max(height, 2)


def test_odd_source_keeps_its_aspect(abr):
    planned = ladder(abr, 1919, 1079)
    assert sizes(planned) == [(1280, 720), (854, 480), (640, 360)]


def test_wide_film_fits_the_box(abr):
    assert sizes(ladder(abr, 1920, 804)) == [(1920, 804), (1280, 536), (854, 358), (640, 268)]


@pytest.mark.parametrize("rotation", [90, 270, -90])
def test_rotated_source_is_planned_as_portrait(abr, rotation):
    planned = ladder(abr, 1920, 1080, rotation)
    assert sizes(planned) == [(1080, 1920), (720, 1280), (480, 854), (360, 640)]
    assert planned == ladder(abr, 1080, 1920)
    assert ladder(abr, 1920, 1080, 180) == ladder(abr, 1920, 1080)


def test_bad_geometry_is_an_input_error(abr):
    with pytest.raises(InputError) as info:
        ladder(abr, 1920, 1080, 45)
    assert info.value.reason == "unsupported_rotation"
    with pytest.raises(InputError) as info:
        ladder(abr, 0, 1080)
    assert info.value.reason == "invalid_dimensions"


@pytest.mark.parametrize("source,expected", [
    (25.0, Fraction(25)), (30000 / 1001, Fraction(30000, 1001)), (Fraction(24000, 1001),
                                                                   Fraction(24000, 1001)),
    (60, Fraction(30)), (60000 / 1001, Fraction(30000, 1001)), (50.0, Fraction(25)),
    (120, Fraction(30)),
])
def test_output_fps(abr, source, expected):
    assert output_fps(abr, source) == expected


@pytest.mark.parametrize("source", [0, -25, float("nan"), float("inf"), 5000])
def test_unusable_frame_rate(abr, source):
    with pytest.raises(InputError) as info:
        output_fps(abr, source)
    assert info.value.reason == "invalid_frame_rate"


# -- codec strings and the stored template ----------------------------------------------------
def test_codecs_strings(abr):
    planned = {r.name: r for r in ladder(abr, 1920, 1080)}
    assert codecs_string(planned["1080p"]) == "avc1.640028"
    assert codecs_string(planned["720p"]) == "avc1.4d401f"
    assert codecs_string(planned["360p"]) == "avc1.4d401e"
    assert codecs_string(abr.audio) == "mp4a.40.2"


def test_command_template_is_json_and_versioned(abr):
    planned = ladder(abr, 1280, 720)
    template = command_template(abr, planned, fps=Fraction(30000, 1001))
    assert json.loads(json.dumps(template)) == template
    assert template["version"] == ffmpeg_args.COMMAND_TEMPLATE_VERSION
    assert template["fps"] == "30000/1001"
    assert template["video"]["preset"] == "veryfast" and template["video"]["threads"] == 2
    assert [r["name"] for r in template["renditions"]] == ["720p", "480p", "360p"]


# -- quotes -----------------------------------------------------------------------------------
def test_quote_is_exact_decimal(abr):
    q = quote(abr, duration_s=60.0, source_width=1920, source_height=1080,
              source_bytes=100_000_000)
    # 3.63552 MP x 60 s x 0.00005; (100e6 + 75.96e6) B x 0.023/GB-month; 75.96e6 B x 0.09/GB
    assert q.estimated_output_bytes == (5000 + 2800 + 1400 + 800 + 128) * 1000 * 60 // 8
    assert (q.compute, q.storage, q.transfer) == (Decimal("0.010907"), Decimal("0.004047"),
                                                  Decimal("0.006836"))
    assert q.total == Decimal("0.021790") == q.compute + q.storage + q.transfer
    for amount in (q.compute, q.storage, q.transfer, q.total):
        assert isinstance(amount, Decimal) and amount.as_tuple().exponent == -6
    assert q.currency == "USD" and [r.name for r in q.renditions] == ["1080p", "720p", "480p",
                                                                       "360p"]
    assert json.loads(q.model_dump_json())["total"] == "0.021790"


def test_quote_follows_the_ladder(abr):
    small = quote(abr, duration_s=60.0, source_width=1280, source_height=720, source_bytes=0)
    full = quote(abr, duration_s=60.0, source_width=1920, source_height=1080, source_bytes=0)
    assert len(small.renditions) == 3 and small.total < full.total


@pytest.mark.parametrize("kwargs,reason", [
    ({"duration_s": 0.1}, "source_too_short"),
    ({"duration_s": 5 * 3600.0}, "source_too_long"),
    ({"duration_s": float("nan")}, "invalid_duration"),
    ({"source_width": 8192, "source_height": 4608}, "source_too_large"),
    ({"source_width": 16000, "source_height": 1000}, "source_too_large"),
    ({"source_bytes": -1}, "invalid_source_size"),
])
def test_quote_enforces_limits(abr, kwargs, reason):
    args = {"duration_s": 10.0, "source_width": 1920, "source_height": 1080,
            "source_bytes": 1000, **kwargs}
    with pytest.raises(InputError) as info:
        quote(abr, **args)
    assert (info.value.status, info.value.reason) == (422, reason)


# -- argument lists ---------------------------------------------------------------------------
def test_segment_args_pin_the_encoder(abr):
    rung = ladder(abr, 1920, 1080)[1]
    args = video_segment_args(abr, rung, fps=Fraction(30000, 1001), start_s=8.0,
                              input_path="/w/src/seg_00002.mp4", output_path="/w/720p/seg.ts")
    assert value_after(args, "-i") == "/w/src/seg_00002.mp4" and args[-1] == "/w/720p/seg.ts"
    assert value_after(args, "-vf") == "scale=w=1280:h=720:flags=bicubic,setsar=1"
    assert value_after(args, "-r:v") == "30000/1001"
    assert value_after(args, "-fps_mode:v") == "cfr"
    assert value_after(args, "-g:v") == value_after(args, "-keyint_min:v") == "120"
    assert value_after(args, "-sc_threshold:v") == "0"
    assert value_after(args, "-force_key_frames:v") == "expr:gte(t,n_forced*4)"
    assert value_after(args, "-output_ts_offset") == "8.000000"
    assert value_after(args, "-muxdelay") == value_after(args, "-muxpreload") == "0"
    assert value_after(args, "-threads:v") == "2"
    assert (value_after(args, "-profile:v"), value_after(args, "-level:v")) == ("main", "3.1")
    assert (value_after(args, "-b:v"), value_after(args, "-maxrate:v"),
            value_after(args, "-bufsize:v")) == ("2800k", "2996k", "4200k")
    assert value_after(args, "-map_metadata") == "-1" and "-an" in args
    assert value_after(args, "-fflags") == "+bitexact"
    assert value_after(args, "-f") == "mpegts"


def test_same_inputs_same_args(abr, tmp_path):
    again = load_profiles(PROFILES_PATH).get("hls-abr")
    assert again is not abr
    kwargs = {"fps": Fraction(25), "start_s": 4.0, "input_path": "/a/in.mp4",
              "output_path": "/a/out.ts"}
    assert (video_segment_args(abr, ladder(abr, 640, 360)[0], **kwargs)
            == video_segment_args(again, ladder(again, 640, 360)[0], **kwargs))
    assert (raw_ladder_args(abr, ladder(abr, 1920, 1080), fps=25, input_path="/a/in.mp4",
                            output_dir="/a/out")
            == raw_ladder_args(again, ladder(again, 1920, 1080), fps=25,
                               input_path="/a/in.mp4", output_dir="/a/out"))


@pytest.mark.parametrize("path", ["relative.mp4", "-i", "concat:/a|/b", "/a/%d.mp4",
                                  "/a/b\n-y"])
def test_paths_cannot_become_options(abr, path):
    rung = ladder(abr, 640, 360)[0]
    with pytest.raises(ValueError):
        video_segment_args(abr, rung, fps=25, start_s=0, input_path=path, output_path="/o.ts")
    with pytest.raises(ValueError):
        audio_args(abr, input_path="/in.mp4", output_dir=path)


@pytest.mark.parametrize("fps", [0, -1, 2.5, "25"])
def test_segment_args_need_a_rational_fps(abr, fps):
    with pytest.raises(ValueError):
        video_segment_args(abr, ladder(abr, 640, 360)[0], fps=fps, start_s=0,
                           input_path="/in.mp4", output_path="/o.ts")


def test_audio_outputs_follow_the_container(abr):
    hls = audio_args(abr, input_path="/in.mp4", output_dir="/out/audio")
    assert hls[-1] == "/out/audio/audio.m3u8"
    assert value_after(hls, "-hls_segment_filename") == "/out/audio/audio_%05d.ts"
    assert (value_after(hls, "-hls_time"), value_after(hls, "-hls_playlist_type")) == ("4", "vod")
    assert (value_after(hls, "-b:a"), value_after(hls, "-ar:a"), value_after(hls, "-ac:a")) == (
        "128k", "48000", "2")
    mp4 = audio_args(get_profile("mp4-1080p"), input_path="/in.mp4", output_dir="/out")
    assert mp4[-1] == "/out/audio.m4a" and value_after(mp4, "-f") == "mp4"


def test_raw_ladder_is_one_command(abr):
    args = raw_ladder_args(abr, ladder(abr, 1920, 1080), fps=25, input_path="/in.mp4",
                           output_dir="/out")
    assert args.count("-i") == 1
    assert value_after(args, "-filter_complex").startswith("[0:v:0]split=4[s0][s1][s2][s3];")
    assert value_after(args, "-var_stream_map") == (
        "v:0,agroup:aac,name:1080p v:1,agroup:aac,name:720p v:2,agroup:aac,name:480p "
        "v:3,agroup:aac,name:360p a:0,agroup:aac,name:audio")
    assert value_after(args, "-b:v:3") == "800k" and value_after(args, "-g:v:3") == "100"


def test_real_ffmpeg_runs_the_argument_lists(tmp_path):
    """One 2 s 320x240 clip through every argument list with the shipped ffmpeg binary."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    def run(args):
        proc = subprocess.run([ffmpeg, "-loglevel", "error", *args], capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr

    clip = make_clip(tmp_path / "clip.mp4", seconds=2.0, width=320, height=240)
    abr = get_profile("hls-abr")
    [rung] = ladder(abr, 320, 240)
    fps = output_fps(abr, 25.0)

    segments = []
    for index, start_s in enumerate([0.0, 2.0]):
        segments.append(tmp_path / f"seg_{index:05d}.ts")
        run(video_segment_args(abr, rung, fps=fps, start_s=start_s, input_path=clip,
                               output_path=segments[-1]))
    timestamps = []
    for segment, start_s in zip(segments, [0, 2]):
        with av.open(str(segment)) as ts:
            stream = ts.streams.video[0]
            assert len(ts.streams.audio) == 0
            assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
            packets = [p for p in ts.demux(stream) if p.size]
            assert packets[0].is_keyframe and len(packets) == 50
            assert packets[0].pts * stream.time_base == start_s
            timestamps += [(p.pts, p.dts) for p in packets]
            sps = bytes(packets[0]).split(b"\x00\x00\x01\x67", 1)[1]
            assert f"avc1.{sps[:3].hex()}" == codecs_string(rung)
    # Back to back: no frame of one segment overlaps the next, in display or decode order.
    assert [pts for pts, _ in timestamps] == sorted(set(pts for pts, _ in timestamps))
    assert [dts for _, dts in timestamps] == sorted(set(dts for _, dts in timestamps))

    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    run(audio_args(abr, input_path=clip, output_dir=audio_dir))
    playlist = (audio_dir / "audio.m3u8").read_text()
    assert "#EXT-X-ENDLIST" in playlist and (audio_dir / "audio_00000.ts").exists()

    run(audio_args(get_profile("mp4-1080p"), input_path=clip, output_dir=tmp_path))
    run(mp4_mux_args(segments, audio_path=tmp_path / "audio.m4a",
                     output_path=tmp_path / "video.mp4"))
    with av.open(str(tmp_path / "video.mp4")) as mp4:
        video = mp4.streams.video[0]
        assert len([p for p in mp4.demux(video) if p.size]) == 100
        assert mp4.streams.audio[0].codec_context.sample_rate == 48000

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    run(raw_ladder_args(abr, [rung], fps=fps, input_path=clip, output_dir=raw_dir))
    assert "240p/index.m3u8" in (raw_dir / "master.m3u8").read_text()
    assert (raw_dir / "240p" / "seg_00000.ts").exists()
