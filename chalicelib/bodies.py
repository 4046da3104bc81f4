"""Request bodies as the API accepts them: bounded in size and nesting, plain JSON values
only (no NaN or Infinity, which JSON does not have and signatures cannot cover), an object
at the top. Every route reads its body through `json_object`, so a malformed one is a 400
with a reason, never a 500."""
from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from chalicelib.errors import InvalidRequest, ProoflineError

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 256 * 1024       # a worker's result or heartbeat is a few KB
MAX_DEPTH = 16                    # the deepest legitimate body (a manifest) nests 4 levels


class BodyTooLarge(ProoflineError):
    status = 413
    reason = "body_too_large"


def json_object(raw: bytes | str | None, *, max_bytes: int = MAX_BODY_BYTES,
                required: bool = False) -> dict[str, Any]:
    """The body as a dict ({} when empty and not `required`)."""
    data = raw.encode() if isinstance(raw, str) else (raw or b"")
    if len(data) > max_bytes:
        raise BodyTooLarge(f"the body is {len(data)} bytes; the limit is {max_bytes}")
    if not data.strip():
        if required:
            raise InvalidRequest("this request needs a JSON body", reason="body_missing")
        return {}
    check_nesting(data)
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except ValueError as exc:
        if isinstance(exc, _NonFinite):
            raise InvalidRequest(str(exc), reason="non_finite_number") from None
        raise InvalidRequest(f"the body is not valid JSON: {exc}",
                             reason="malformed_json") from None
    check_plain(value)
    if not isinstance(value, dict):
        raise InvalidRequest("the body must be a JSON object", reason="body_not_object")
    return value


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_nesting(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse text whose brackets (outside strings) nest deeper than `limit`, before any
    parser sees it: the C JSON and YAML parsers recurse per level, and a few thousand levels
    overflow the stack and kill the process rather than raise."""
    depth = 0
    for bracket in _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        if depth > limit:
            raise InvalidRequest(f"the body nests deeper than {limit} levels",
                                 reason="body_too_deep")


def check_plain(value: Any, limit: int = MAX_DEPTH) -> None:
    """InvalidRequest if `value` nests lists and objects deeper than `limit`, or holds a
    number that is not finite (YAML has `.nan`); walked iteratively, so a hostile body
    cannot exhaust the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequest(f"{item} is not a finite number", reason="non_finite_number")
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise InvalidRequest(f"the body nests deeper than {limit} levels",
                                     reason="body_too_deep")
            stack.extend((child, depth + 1)
                         for child in (item.values() if isinstance(item, dict) else item))


class _NonFinite(ValueError):
    pass


def _no_constant(name: str):
    raise _NonFinite(f"{name} is not a JSON number; send finite numbers only")


_CURSOR = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$")


def cursor(value: str | None) -> str | None:
    """A list's `cursor` query parameter: the `next` of a previous page, or nothing."""
    if value is not None and not _CURSOR.match(value):
        raise InvalidRequest("cursor must be the `next` of a previous page",
                             reason="invalid_query")
    return value


def limit(value: str | None, default: int, most: int = 500) -> int:
    """A list's `limit` query parameter: 1..most."""
    try:
        count = int(value) if value is not None else default
    except ValueError:
        count = 0
    if not 1 <= count <= most:
        raise InvalidRequest(f"limit must be 1-{most}, not {value}", reason="invalid_query")
    return count


def model(schema: type[M], body: dict, *, what: str, reason: str = "invalid_value") -> M:
    """`body` as the strict pydantic `schema`, or a 400 naming the first field at fault."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"{what}: {'.'.join(map(str, first['loc'])) or '(body)'}: "
                             f"{first['msg']}", reason=reason) from None
