"""The S3 adapter's hashed copy and folder listing: how a package's segments are placed
and how the assembly finds them."""
from __future__ import annotations

import base64
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
    assert blobs.head(target) is None                                # nothing there yet
    copied = blobs.copy_hashed(S3Uri(bucket, "outputs/seg.ts"), target, content_type="video/mp2t")
    assert copied == "sha256:" + hashlib.sha256(data).hexdigest()
    head = aws.s3.head_object(Bucket=bucket, Key=target.key, ChecksumMode="ENABLED")
    assert "sha256:" + base64.b64decode(head["ChecksumSHA256"]).hex() == copied  # kept with it
    assert head["ContentType"] == "video/mp2t" and head["ContentLength"] == len(data)


def test_a_missing_source_copies_nothing(aws, bucket):
    blobs, target = Blobs(aws.s3), S3Uri(bucket, "packages/abc/seg.ts")
    assert blobs.copy_hashed(S3Uri(bucket, "outputs/gone.ts"), target) is None
    assert blobs.head(target) is None


def test_a_folders_sizes_come_from_one_listing_past_a_thousand_keys(aws, bucket):
    """How the assembly sees which segments are already in its package: every key under
    the prefix with its size, over pages of a thousand, and nothing outside it."""
    blobs = Blobs(aws.s3)
    for n in range(1003):
        aws.s3.put_object(Bucket=bucket, Key=f"packages/job/001/720p/seg_{n:05d}.ts",
                          Body=bytes(n % 5))
    aws.s3.put_object(Bucket=bucket, Key="packages/job/0010/other.ts", Body=b"x")
    sizes = blobs.sizes(S3Uri(bucket, "packages/job/001/"))
    assert len(sizes) == 1003
    assert sizes["packages/job/001/720p/seg_01002.ts"] == 1002 % 5
    assert blobs.sizes(S3Uri(bucket, "packages/job/001/"), limit=10) == dict(
        list(sizes.items())[:10])
