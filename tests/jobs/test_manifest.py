"""Intake parsing: manifests from JSON/YAML bodies, reason codes, body keys, S3 drops."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from chalicelib.errors import InvalidManifest, ManifestTooLarge, UnknownProfile
from chalicelib.jobs.intake import Drop, _prefix_name, body_key, drops, parse_manifest
from chalicelib.models import Manifest

MAX = 64 * 1024
BASE = {"kind": "media_probe", "input_uri": "s3://bucket-a/key.mp4"}
FULL = {
    "job_id": "my-job.1",
    "kind": "media_probe",
    "input_uri": "s3://bucket-a/in/clip.mp4",
    "input_hash": "sha256:" + "ab" * 32,
    "profile": "fast",
    "model": "pyav-12",
    "max_attempts": 5,
    "payment_policy": "none",
    "validation": {"min_duration_s": 1},
    "deadline": "2030-01-01T00:00:00+02:00",
    "max_price": "0.001",
    "client_did": "did:pkh:eip155:31337:0x" + "aB" * 20,
}


def parse(data) -> Manifest:
    return parse_manifest(data if isinstance(data, (str, bytes)) else json.dumps(data),
                          max_bytes=MAX)


def parse_yaml(text: str) -> Manifest:
    return parse_manifest(text, max_bytes=MAX, yaml_ok=True)


def reject(data, **kw) -> InvalidManifest:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(data if isinstance(data, (str, bytes)) else json.dumps(data),
                       max_bytes=kw.get("max_bytes", MAX))
    return info.value


# -- valid -----------------------------------------------------------------------------------
def test_minimal_json_manifest():
    m = parse(json.dumps(BASE).encode())
    assert (m.kind, m.input_uri) == ("media_probe", "s3://bucket-a/key.mp4")
    assert m.max_attempts is None and m.deadline is None and m.max_price is None


def test_yaml_manifest():
    m = parse_yaml("kind: media_probe\ninput_uri: s3://bucket-a/key.mp4\nmax_attempts: 2\n")
    assert (m.kind, m.input_uri, m.max_attempts) == ("media_probe", "s3://bucket-a/key.mp4", 2)


def test_manifest_with_every_field():
    m = parse(FULL)
    assert m.job_id == "my-job.1" and m.profile == "fast" and m.model == "pyav-12"
    assert m.input_hash == FULL["input_hash"]
    assert m.max_attempts == 5 and m.payment_policy == "none"
    assert m.validation == {"min_duration_s": 1}
    assert m.deadline == datetime(2029, 12, 31, 22, 0, tzinfo=timezone.utc)
    assert m.deadline.utcoffset() == timedelta(hours=2)
    assert isinstance(m.max_price, Decimal) and m.max_price == Decimal("0.001")
    assert str(m.max_price) == "0.001"
    assert m.client_did == FULL["client_did"]
    assert set(m.model_dump(exclude_none=True)) == set(FULL)


# -- invalid ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change,reason,field", [
    ({"kind": None}, "missing_field", "kind"),
    ({"input_uri": None}, "missing_field", "(root)"),      # no input_uri, texts or prompt
    ({"colour": "blue"}, "unknown_field", "colour"),
    ({"max_attempts": "abc"}, "wrong_type", "max_attempts"),
    ({"validation": [1, 2]}, "wrong_type", "validation"),
    ({"max_price": "-1"}, "invalid_value", "max_price"),
    ({"max_attempts": 0}, "invalid_value", "max_attempts"),
    ({"max_attempts": 11}, "invalid_value", "max_attempts"),
    ({"input_hash": "md5:" + "a" * 32}, "invalid_value", "input_hash"),
    ({"input_hash": "sha256:" + "A" * 64}, "invalid_value", "input_hash"),
    ({"deadline": "2030-01-01T00:00:00"}, "invalid_value", "deadline"),
    ({"input_uri": "https://bucket-a/key"}, "invalid_value", "input_uri"),
    ({"client_did": "did:pkh:eip155:1:0x1234"}, "invalid_value", "client_did"),
    ({"job_id": "a"}, "invalid_value", "job_id"),
])
def test_bad_manifests_name_reason_and_field(change, reason, field):
    data = {**FULL, **change}
    data = {k: v for k, v in data.items() if v is not None}
    err = reject(data)
    assert err.status == 400
    assert err.reason == reason
    assert isinstance(err.details, list) and err.details
    assert all(set(d) == {"field", "type", "message"} for d in err.details)
    assert err.details[0]["field"] == field
    assert field in err.message


@pytest.mark.parametrize("body, reason", [
    (b"[1, 2]", "body_not_object"), (b'"just a string"', "body_not_object"),
    (b"null", "body_not_object"), (b"42", "body_not_object"), (b"", "body_missing"),
    (b"   \n", "body_missing"), (b"{not json", "malformed_json"),
    (b"\xff\xfe{", "malformed_json"), (b'{"max_attempts": NaN}', "non_finite_number")])
def test_non_objects_are_malformed(body, reason):
    err = reject(body)
    assert (err.status, err.reason) == (400, reason)


def test_oversize_body_is_413():
    body = json.dumps(FULL)
    assert len(body) > 100
    with pytest.raises(ManifestTooLarge) as info:
        parse_manifest(body, max_bytes=100)
    assert (info.value.status, info.value.reason) == (413, "manifest_too_large")
    assert parse_manifest(body, max_bytes=len(body.encode())).kind == "media_probe"


def test_max_bytes_counts_bytes_not_characters():
    body = json.dumps({**BASE, "model": "é" * 20}, ensure_ascii=False)
    assert len(body) <= 100 < len(body.encode())
    with pytest.raises(ManifestTooLarge):
        parse_manifest(body, max_bytes=100)


# JSON bodies go through a JSON parser: YAML 1.1 is not one.
# Valid JSON is refused or changed: tab-indented JSON (json.dumps(indent="\t")) is
# "malformed_json"; a \ud83d\ude00 surrogate-pair escape (json.dumps' default for emoji)
# becomes two lone surrogates instead of one character; 2e0 is read as the string "2e0"
# and max_attempts is refused as wrong_type.
@pytest.mark.parametrize("body", [
    json.dumps({**BASE, "max_attempts": 2}, indent="\t"),
    json.dumps({**BASE, "validation": {"note": "\U0001F600"}}),
    '{"kind": "media_probe", "input_uri": "s3://bucket-a/key.mp4", "max_attempts": 2e0}',
], ids=["tab-indent", "surrogate-pair", "exponent"])
def test_valid_json_parses_as_json(body):
    assert parse(body) == Manifest.model_validate(json.loads(body))


def test_yaml_aliases_are_refused():
    """A few hundred bytes of anchors can describe a tree of 2**depth leaves."""
    lines = ["kind: media_probe", "input_uri: s3://bucket-a/key.mp4", "validation:",
             "  a0: &a0 [x, x]"]
    lines += [f"  a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 13)]
    with pytest.raises(InvalidManifest) as info:
        parse_yaml("\n".join(lines) + "\n")
    assert info.value.reason == "malformed_json" and "aliases" in info.value.message


def test_yaml_is_only_read_when_asked_for():
    with pytest.raises(InvalidManifest):
        parse("kind: media_probe\ninput_uri: s3://bucket-a/key.mp4\n")


# -- body_key --------------------------------------------------------------------------------
def test_body_key_is_stable_across_key_order_and_format():
    a = parse(FULL)
    b = parse(dict(reversed(list(FULL.items()))))
    c = parse_yaml("\n".join(f"{k}: {json.dumps(v)}" for k, v in FULL.items()))
    assert body_key(a) == body_key(b) == body_key(c)
    assert body_key(a).startswith("sha256:") and len(body_key(a)) == 7 + 64


@pytest.mark.parametrize("change", [{"max_attempts": 4}, {"input_uri": "s3://bucket-a/other"},
                                    {"validation": {"min_duration_s": 2}}, {"job_id": None}])
def test_body_key_differs_when_a_field_differs(change):
    other = {k: v for k, v in {**FULL, **change}.items() if v is not None}
    assert body_key(parse(FULL)) != body_key(parse(other))


# -- S3 drops --------------------------------------------------------------------------------
def s3_record(event_name: str, key: str, *, bucket="proofline-drops", etag="d41d8cd98f00b204e9800998ecf8427e", size=1234):
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-03-01T12:00:00.000Z", "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
                             "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "intake",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": size, "eTag": etag,
                          "sequencer": "0055AED6DCD90281E5"}},
    }


def test_created_object_becomes_a_drop_with_decoded_key():
    body = json.loads(json.dumps({"Records": [
        s3_record("ObjectCreated:Put", "intake/media_probe/my+clip%281%29.mp4")]}))
    assert drops(body) == [Drop(bucket="proofline-drops", key="intake/media_probe/my clip(1).mp4",
                                etag="d41d8cd98f00b204e9800998ecf8427e", size=1234)]
    assert str(drops(body)[0].uri) == "s3://proofline-drops/intake/media_probe/my clip(1).mp4"


def test_quoted_etag_is_unquoted_and_removals_are_ignored():
    body = {"Records": [
        s3_record("ObjectRemoved:Delete", "intake/media_probe/gone.mp4"),
        s3_record("ObjectCreated:CompleteMultipartUpload", "intake/media_probe/a%2Bb.mp4",
                  etag='"abc-2"', size=7),
    ]}
    assert drops(body) == [Drop("proofline-drops", "intake/media_probe/a+b.mp4", "abc-2", 7)]


def test_s3_test_event_yields_nothing():
    body = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-03-01T12:00:00.000Z",
            "Bucket": "proofline-drops", "RequestId": "5582815E1AEA5ADF",
            "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}
    assert drops(body) == []


# -- prefixes --------------------------------------------------------------------------------
@pytest.mark.parametrize("key,name", [
    ("intake/media_probe/a.mp4", "media_probe"),
    ("intake/media_probe/deep/er/a.mp4", "media_probe"),
    ("other/a.mp4", None),
    ("a.mp4", None),
])
def test_prefix_name(key, name):
    assert _prefix_name(key) == name


@pytest.mark.parametrize("key", ["intake/a.mp4", "intake//a.mp4"])
def test_prefix_without_a_name_is_an_unknown_profile(key):
    with pytest.raises(UnknownProfile) as info:
        _prefix_name(key)
    assert (info.value.status, info.value.reason) == (400, "unknown_profile")
