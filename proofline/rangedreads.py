"""The local endpoint's S3 GetObject with a byte range reads only that range.

S3 serves `Range: bytes=a-b` at the cost of the range. moto 5.2.5 reads the whole object,
copies it, then slices (`FakeKey.value`, then `S3Response._handle_range_header`), so a
ranged read of a large object costs the whole object: FFmpeg reading a ten-minute source's
header through a presigned URL made a dozen such requests and spent seconds on them, a
figure of moto's, not of the planner's. `ranged_get_object` answers the plain case (one
byte range within the object, short of all of it; no part number, no response-header
overrides; the object modified) from the object's buffer alone, with the headers moto's
`get_object` sets for a part (no checksum); every other request, and every error, is
moto's own. Pinned with moto (awsendpoint.MOTO_VERSION).
"""
from __future__ import annotations

import re
from typing import Any

from moto.core.common_types import TYPE_RESPONSE
from moto.s3.responses import ALLOWED_HEADER_OVERRIDES, S3Response

_MOTO_GET_OBJECT = S3Response.get_object
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def install_ranged_reads() -> None:
    """For every S3 server (and mock) in this process, as moto keeps its classes per
    process; idempotent."""
    S3Response.get_object = ranged_get_object


def ranged_get_object(self: S3Response) -> TYPE_RESPONSE:
    wanted = _RANGE.fullmatch(self.headers.get("range") or "")
    if (wanted is None or wanted.groups() == ("", "") or self._get_int_param("partNumber")
            or any(name in self.querystring for name in ALLOWED_HEADER_OVERRIDES)):
        return _MOTO_GET_OBJECT(self)
    key, not_modified = self._get_key()
    span = _span(wanted, key.size)
    if not_modified or span is None or span == (0, key.size - 1):
        return _MOTO_GET_OBJECT(self)     # a 304, moto's InvalidRange, or the whole object
    # (a part of an object carries no checksum, whatever x-amz-checksum-mode asks)
    begin, end = span
    with key.lock:
        key._value_buffer.seek(begin)
        content = key._value_buffer.read(end - begin + 1)
    headers: dict[str, Any] = self._get_cors_headers_other()
    if key.version_id != "null":
        headers["x-amz-version-id"] = key.version_id
    headers.update(key.response_dict)
    headers.update(key.metadata)
    headers.update({"Accept-Ranges": "bytes", "content-range": f"bytes {begin}-{end}/{key.size}",
                    "content-length": str(len(content))})
    return 206, headers, content


def _span(wanted: re.Match, size: int) -> tuple[int, int] | None:
    """The inclusive byte span S3 serves for `bytes=a-b`, `bytes=a-` or `bytes=-n`; None
    where moto's own answer is wanted (a range past the end, or one S3 treats as the
    whole object)."""
    first, last = (int(g) if g else None for g in wanted.groups())
    end_of_object = size - 1
    if first is None:                          # the last `last` bytes
        if not last:
            return None
        first, last = max(0, size - last), end_of_object
    else:
        last = end_of_object if last is None else min(last, end_of_object)
    if first > end_of_object or first > last:
        return None
    return first, last
