"""The rules that hold a client's own segments to its source, case by case (pure)."""
from chalicelib.media.client_split import (
    Measured,
    SourceHeader,
    display_size,
    listing_problems,
    measured_problems,
)
from chalicelib.models import SegmentRef

SOURCE = SourceHeader(width=1080, height=1920, rotation=90, frame_rate="25/1", duration_s=8.0)


def refs(*durations: float) -> list[SegmentRef]:
    starts = [sum(durations[:i]) for i in range(len(durations))]
    return [SegmentRef(input_uri=f"s3://bucket-a/inputs/{i}", start_s=s, duration_s=d)
            for i, (s, d) in enumerate(zip(starts, durations))]


def segment(**changes) -> Measured:
    return Measured(**{"codec": "h264", "pix_fmt": "yuv420p", "width": 1920, "height": 1080,
                       "rotation": 0, "frame_rate": "25/1", "variable_frame_rate": False,
                       "starts_on_keyframe": True, "duration_s": 4.0, **changes})


def test_the_source_cut_as_listed_has_no_problems():
    assert listing_problems(refs(4.0, 4.0), 4.0) == []
    assert measured_problems(refs(4.0, 4.0), [segment(), segment()], SOURCE) == []


def test_a_rotated_odd_source_shows_an_upright_even_picture():
    assert display_size(1080, 1920, 90) == (1920, 1080)
    assert display_size(641, 481, 0) == (640, 480)


def test_each_way_a_segment_can_differ_from_the_source_is_named():
    cases = {"H.264 4:2:0": segment(codec="hevc"), "rotated": segment(rotation=90),
             "the source shows": segment(width=1280, height=720),
             "keyframe": segment(starts_on_keyframe=False),
             "listed as": segment(duration_s=3.5), "frames a second": segment(frame_rate="30/1")}
    for words, wrong in cases.items():
        found = measured_problems(refs(4.0, 4.0), [segment(), wrong], SOURCE)
        assert any(words in problem for problem in found), (words, found)


def test_segments_shorter_than_the_source_together_are_named():
    found = measured_problems(refs(4.0), [segment()], SOURCE)
    assert found == ["the segments last 4.000 s together; the source lasts 8.000 s"]


def test_a_listing_with_a_gap_an_overlong_piece_or_a_repeat_is_named():
    gap = refs(4.0, 4.0)
    gap[1] = gap[1].model_copy(update={"start_s": 4.5})
    assert "where segment 0 ended" in listing_problems(gap, 4.0)[0]
    assert "longer than the profile's" in listing_problems(refs(6.0), 4.0)[0]
    twice = refs(4.0, 4.0)
    twice[1] = twice[1].model_copy(update={"input_uri": twice[0].input_uri})
    assert listing_problems(twice, 4.0) == ["a segment is listed twice"]
