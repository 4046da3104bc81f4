"""The S3 adapter's hashed copy: how the assembly places a package's segments."""
from __future__ import annotations

import hashlib
import uuid

import pytest

from chalicelib.aws.blobs import Blobs, S3Uri

pytestmark = pytest.mark.stack


@pytest.fixture
def bucket(aws) -> str:
    """A bucket of the test's own on the stack's moto server (mock_aws would reset the
    in-process backends the session's stack serves from)."""
    name = f"blobs-test-{uuid.uuid4().hex[:12]}"
    aws.s3.create_bucket(Bucket=name)
    return name


def test_a_copy_is_hashed_by_s3_as_it_is_written(aws, bucket):
    blobs, data = Blobs(aws.s3), b"\x47" + bytes(187) * 3
    aws.s3.put_object(Bucket=bucket, Key="outputs/seg.ts", Body=data)
    target = S3Uri(bucket, "packages/abc/360p/seg_00000.ts")
    assert blobs.stored_sha256(target) is None                       # nothing there yet
    copied = blobs.copy_hashed(S3Uri(bucket, "outputs/seg.ts"), target, content_type="video/mp2t")
    assert copied == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blobs.stored_sha256(target) == copied                     # kept with the object
    head = aws.s3.head_object(Bucket=bucket, Key=target.key)
    assert head["ContentType"] == "video/mp2t" and head["ContentLength"] == len(data)


def test_a_missing_source_copies_nothing(aws, bucket):
    blobs, target = Blobs(aws.s3), S3Uri(bucket, "packages/abc/seg.ts")
    assert blobs.copy_hashed(S3Uri(bucket, "outputs/gone.ts"), target) is None
    assert blobs.head(target) is None


def test_an_object_stored_without_a_checksum_is_hashed_by_reading_it(aws, bucket):
    aws.s3.put_object(Bucket=bucket, Key="packages/old/seg.ts", Body=b"old bytes")
    assert Blobs(aws.s3).stored_sha256(S3Uri(bucket, "packages/old/seg.ts")) == \
        "sha256:" + hashlib.sha256(b"old bytes").hexdigest()
