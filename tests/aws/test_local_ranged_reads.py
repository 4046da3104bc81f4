"""The local endpoint's ranged S3 reads (proofline/rangedreads.py) answer as S3 does and
read only the range: through boto3 and through a presigned URL (as FFmpeg reads a source's
header), every form of byte range gives exactly those bytes with S3's headers, the forms
S3 answers whole or refuses are answered so, and no ranged read loads the whole object.
Run over HTTP against an endpoint of the test's own."""
from __future__ import annotations

import os
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.s3.models import FakeKey

from proofline.awsendpoint import AwsEndpoint
from proofline.devstack import HOST, free_port

SIZE = 3 * 1024 * 1024 + 17           # past moto's in-memory spool: the buffer is a file
BODY = os.urandom(SIZE)


@pytest.fixture(scope="module")
def s3():
    endpoint = AwsEndpoint(ip_address=HOST, port=free_port(), verbose=False)
    endpoint.start()
    try:
        client = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1").client("s3", endpoint_url=f"http://{HOST}:{endpoint._port}")
        client.create_bucket(Bucket="ranges")
        client.put_object(Bucket="ranges", Key="source.mp4", Body=BODY, ContentType="video/mp4",
                          Metadata={"origin": "test"})
        yield client
    finally:
        endpoint.stop()


@pytest.fixture()
def whole_reads(monkeypatch):
    """Counts every time an object's whole content is loaded, in this process (the
    endpoint serves from a thread of it)."""
    loads = []
    whole = FakeKey.value

    def counted(key):
        loads.append(key.name)
        return whole.fget(key)
    monkeypatch.setattr(FakeKey, "value", property(counted, whole.fset))
    return loads


@pytest.mark.parametrize("header, first, last", [
    ("bytes=0-99", 0, 99),
    ("bytes=1048576-", 1048576, SIZE - 1),
    ("bytes=-4096", SIZE - 4096, SIZE - 1),
    ("bytes=5-5", 5, 5),
    ("bytes=100-999999999", 100, SIZE - 1),            # an end past the object is clamped
])
def test_a_byte_range_gives_those_bytes_with_s3s_headers(s3, whole_reads, header, first, last):
    got = s3.get_object(Bucket="ranges", Key="source.mp4", Range=header)
    whole = s3.head_object(Bucket="ranges", Key="source.mp4")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["Body"].read() == BODY[first:last + 1]
    assert got["ContentRange"] == f"bytes {first}-{last}/{SIZE}"
    assert got["ContentLength"] == last - first + 1
    assert got["ETag"] == whole["ETag"] and got["ContentType"] == "video/mp4"
    assert got["Metadata"] == {"origin": "test"} and got["AcceptRanges"] == "bytes"
    assert not any(h.startswith("x-amz-checksum-") for h in got["ResponseMetadata"]["HTTPHeaders"])
    assert whole_reads == []


def test_a_presigned_ranged_read_as_ffmpeg_makes_it(s3, whole_reads):
    url = s3.generate_presigned_url("get_object", ExpiresIn=60,
                                    Params={"Bucket": "ranges", "Key": "source.mp4"})
    request = urllib.request.Request(url, headers={"Range": f"bytes={SIZE - 300}-"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == BODY[-300:]
        assert response.headers["Content-Range"] == f"bytes {SIZE - 300}-{SIZE - 1}/{SIZE}"
    assert whole_reads == []


def test_what_s3_answers_whole_or_refuses_is_answered_so(s3):
    for whole in ("bytes=10-5", "bytes=0-1,5-6", "bytes=abc"):
        got = s3.get_object(Bucket="ranges", Key="source.mp4", Range=whole)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 200, whole
        assert got["Body"].read() == BODY
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket="ranges", Key="source.mp4", Range=f"bytes={SIZE}-")
    assert refused.value.response["Error"]["Code"] == "InvalidRange"
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket="ranges", Key="absent.mp4", Range="bytes=0-9")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    unchanged = s3.head_object(Bucket="ranges", Key="source.mp4")["ETag"]
    with pytest.raises(ClientError) as not_modified:
        s3.get_object(Bucket="ranges", Key="source.mp4", Range="bytes=0-9",
                      IfNoneMatch=unchanged)
    assert not_modified.value.response["Error"]["Code"] == "304"


def test_a_whole_read_is_moto_s(s3, whole_reads):
    assert s3.get_object(Bucket="ranges", Key="source.mp4")["Body"].read() == BODY
    everything = s3.get_object(Bucket="ranges", Key="source.mp4", Range=f"bytes=-{SIZE * 2}")
    assert everything["ContentRange"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert everything["Body"].read() == BODY
    assert whole_reads == ["source.mp4", "source.mp4"]
