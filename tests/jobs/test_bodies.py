"""Request bodies: bounded, finite, an object; every failure a 400 (or 413) with a reason."""
import pytest

from chalicelib.bodies import MAX_DEPTH, BodyTooLarge, check_plain, json_object
from chalicelib.errors import InvalidRequest


def reason_of(raw, **options) -> str:
    with pytest.raises(InvalidRequest) as error:
        json_object(raw, **options)
    return error.value.reason


def test_a_plain_object_passes_and_an_empty_body_is_an_empty_object():
    assert json_object(b'{"a": [1, 2.5, {"b": null}]}') == {"a": [1, 2.5, {"b": None}]}
    assert json_object(b"") == {} and json_object(None) == {}
    assert reason_of(b"  ", required=True) == "body_missing"


@pytest.mark.parametrize("raw, reason", [
    (b'{"a": NaN}', "non_finite_number"),
    (b'{"a": -Infinity}', "non_finite_number"),
    (b"[1]", "body_not_object"),
    (b"{", "malformed_json"),
    (b"[" * 100_000 + b"]" * 100_000, "body_too_deep"),
    (b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", "body_too_deep"),
])
def test_what_is_refused_and_why(raw, reason):
    assert reason_of(raw) == reason


def test_the_deepest_allowed_body_passes():
    raw = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    assert json_object(b'{"a": ' + raw + b"}")


def test_size_is_checked_before_parsing():
    with pytest.raises(BodyTooLarge) as error:
        json_object(b'{"a": "' + b"x" * 100 + b'"}', max_bytes=50)
    assert error.value.status == 413 and error.value.reason == "body_too_large"


def test_a_yaml_nan_is_caught_by_the_walk():
    with pytest.raises(InvalidRequest) as error:
        check_plain({"a": [1.0, float("nan")]})
    assert error.value.reason == "non_finite_number"
