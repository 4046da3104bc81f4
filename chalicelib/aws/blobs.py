"""S3 adapter: content-addressed inputs and outputs, attempt-scoped uploads, presigned URLs."""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlparse

from botocore.exceptions import ClientError

from chalicelib.errors import InputError, InvalidRequest

CHUNK = 1 << 20


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3Uri":
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/"):
            raise InputError(f"not an s3:// URI: {uri!r}", reason="input_uri_invalid")
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def input_key(sha256: str) -> str:
    return f"inputs/{sha256.replace(':', '/')}"


def attempt_key(job_id: str, attempt: int, name: str) -> str:
    return f"attempts/{job_id}/{attempt:03d}/{name}"


def evidence_key(upload_key: str, sha256: str) -> str:
    """Where a worker's upload is frozen at submission, under the hash it claimed: no
    presigned URL ever names it."""
    return f"evidence/{sha256.replace(':', '/')}/{upload_key.removeprefix('attempts/')}"


def output_key(sha256: str, name: str) -> str:
    return f"outputs/{sha256.replace(':', '/')}/{name}"


class Blobs:
    def __init__(self, client):
        self._s3 = client

    def head(self, uri: S3Uri) -> dict | None:
        try:
            return self._s3.head_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def sha256(self, uri: S3Uri) -> tuple[str, int]:
        """Stream the object through sha256; returns ("sha256:<hex>", size)."""
        body = self._get(uri)["Body"]
        digest, size = hashlib.sha256(), 0
        for chunk in iter(lambda: body.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
        return f"sha256:{digest.hexdigest()}", size

    def read(self, uri: S3Uri, limit: int) -> bytes:
        data = self._get(uri)["Body"].read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{uri} is larger than {limit} bytes", reason="object_too_large")
        return data

    def download(self, uri: S3Uri, path: Path, limit: int) -> int:
        """Stream the object to `path` (one GET); refuses more than `limit` bytes."""
        response = self._get(uri)
        size = response["ContentLength"]
        if size > limit:
            response["Body"].close()
            raise InputError(f"{uri} is {size} bytes; the limit is {limit}",
                             reason="input_too_large")
        with open(path, "wb") as out:
            for chunk in iter(lambda: response["Body"].read(CHUNK), b""):
                out.write(chunk)
        return size

    def list_keys(self, prefix: S3Uri, limit: int = 1000) -> list[str]:
        """Keys under `prefix` (at most `limit`)."""
        return list(self.sizes(prefix, limit))

    def sizes(self, prefix: S3Uri, limit: int = 10_000) -> dict[str, int]:
        """Each key under `prefix` (at most `limit`) with its size: a thousand to a request."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=prefix.bucket, Prefix=prefix.key, PaginationConfig={"MaxItems": limit})
        return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}

    def put(self, uri: S3Uri, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=data, ContentType=content_type)

    def upload(self, uri: S3Uri, path: Path,
               content_type: str = "application/octet-stream") -> None:
        with open(path, "rb") as body:
            self._s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType=content_type)

    def copy(self, source: S3Uri, target: S3Uri) -> None:
        self._s3.copy_object(Bucket=target.bucket, Key=target.key,
                             CopySource={"Bucket": source.bucket, "Key": source.key})

    def copy_hashed(self, source: S3Uri, target: S3Uri,
                    content_type: str | None = None) -> str | None:
        """Copy server-side (no byte passes through this process) with S3 computing the
        copy's SHA-256 as it writes it, and keeping it with the object: returns
        "sha256:<hex>" of what now lies at `target`, or None when `source` does not exist.
        Reads the copy back only if S3 gave no whole-object SHA-256 (a single CopyObject
        always gives one)."""
        extra = {"ContentType": content_type, "MetadataDirective": "REPLACE"} if content_type else {}
        try:
            result = self._s3.copy_object(
                Bucket=target.bucket, Key=target.key, ChecksumAlgorithm="SHA256",
                CopySource={"Bucket": source.bucket, "Key": source.key},
                **extra)["CopyObjectResult"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return _sha256_of(result) or self.sha256(target)[0]

    def freeze(self, upload: S3Uri, evidence: S3Uri) -> dict | None:
        """Copy what a worker uploaded to where it cannot write, at the moment it commits
        to its result: what is measured and promoted from then on is this copy, whatever
        the worker uploads later through its URL. The copy's head, or None if nothing was
        uploaded."""
        try:
            self.copy(upload, evidence)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return self.head(evidence)

    def presign_upload(self, uri: S3Uri, expires: int, *, size: int, sha256: str) -> tuple[str, dict]:
        """A PUT URL bound to one length and one SHA-256 (S3 refuses other bytes), and the
        headers the uploader must send with it."""
        checksum = base64.b64encode(bytes.fromhex(sha256.removeprefix("sha256:"))).decode()
        url = self._s3.generate_presigned_url("put_object", ExpiresIn=expires, Params={
            "Bucket": uri.bucket, "Key": uri.key, "ContentLength": size,
            "ChecksumSHA256": checksum})
        return url, {"Content-Length": str(size), "x-amz-checksum-sha256": checksum}

    def start_multipart(self, uri: S3Uri) -> str:
        return self._s3.create_multipart_upload(Bucket=uri.bucket, Key=uri.key)["UploadId"]

    def presign_part(self, uri: S3Uri, upload_id: str, number: int, size: int,
                     expires: int) -> str:
        """A PUT URL for one part of a multipart upload, bound to its length."""
        return self._s3.generate_presigned_url("upload_part", ExpiresIn=expires, Params={
            "Bucket": uri.bucket, "Key": uri.key, "UploadId": upload_id, "PartNumber": number,
            "ContentLength": size})

    def complete_multipart(self, uri: S3Uri, upload_id: str,
                           parts: list[tuple[int, str]]) -> None:
        try:
            self._s3.complete_multipart_upload(
                Bucket=uri.bucket, Key=uri.key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag}
                                           for n, etag in parts]})
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload",
                        "MalformedXML", "InvalidArgument"):
                raise InvalidRequest(f"the parts do not make the upload: {code}",
                                     reason="invalid_parts") from None
            raise

    def promote(self, source: S3Uri, target: S3Uri, tags: dict[str, str]) -> None:
        """Copy (multipart past 5 GB) to where no client writes, tagged."""
        self._s3.copy({"Bucket": source.bucket, "Key": source.key}, target.bucket, target.key,
                      ExtraArgs={"Tagging": urlencode(tags), "TaggingDirective": "REPLACE"})

    def tag(self, uri: S3Uri, tags: dict[str, str]) -> None:
        try:
            self._s3.put_object_tagging(Bucket=uri.bucket, Key=uri.key, Tagging={
                "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise InputError(f"{uri} does not exist", reason="input_missing") from exc
            raise

    def delete(self, uri: S3Uri) -> None:
        self._s3.delete_object(Bucket=uri.bucket, Key=uri.key)

    def presign_put(self, uri: S3Uri, expires: int) -> str:
        return self._s3.generate_presigned_url("put_object", ExpiresIn=expires,
                                               Params={"Bucket": uri.bucket, "Key": uri.key})

    def presign_get(self, uri: S3Uri, expires: int) -> str:
        return self._s3.generate_presigned_url("get_object", ExpiresIn=expires,
                                               Params={"Bucket": uri.bucket, "Key": uri.key})

    def _get(self, uri: S3Uri) -> dict:
        try:
            return self._s3.get_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise InputError(f"{uri} does not exist", reason="input_missing") from exc
            raise


def _sha256_of(response: dict) -> str | None:
    """"sha256:<hex>" from an S3 response's ChecksumSHA256, when it covers the whole object
    (a multipart object's composite checksum, "<base64>-<parts>", does not)."""
    checksum = response.get("ChecksumSHA256")
    if not checksum or "-" in checksum or response.get("ChecksumType") == "COMPOSITE":
        return None
    return "sha256:" + base64.b64decode(checksum).hex()
