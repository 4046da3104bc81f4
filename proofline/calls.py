"""Which AWS calls each function makes, as IAM authorizes them: the local stack's recorder.

With `PROOFLINE_RECORD_CALLS=<directory>` in its environment, the local stack (the API, the
event pump and the pump's worker processes) writes one JSON line per distinct
`{"function", "action", "resource"}` to `<directory>/calls-<pid>.jsonl`: the function is the
Lambda whose invocation is running (`acting`, set by the pump around each consumer and by
the local API around each request), the action is the IAM action the call needs
(`dynamodb:UpdateItem`, `sqs:SendMessage`, `s3:PutObject`) and the resource names the
table (`table/NAME`, `table/NAME/index/INDEX`), queue (`NAME`) or bucket (`BUCKET`, or
`BUCKET/PREFIX/` for an object under a key prefix). A presigned URL is recorded as the
operation it allows: whoever holds it acts with the function's rights.
`tests/deploy/test_iam.py` checks the lines against the stage's policies.
"""
from __future__ import annotations

import contextvars
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from chalicelib import aws

ENVIRONMENT = "PROOFLINE_RECORD_CALLS"

acting: contextvars.ContextVar[str | None] = contextvars.ContextVar("proofline_function",
                                                                     default=None)


@contextmanager
def acting_as(function: str) -> Iterator[None]:
    """The AWS calls made inside are `function`'s (a Lambda's name in the stage)."""
    token = acting.set(function)
    try:
        yield
    finally:
        acting.reset(token)


def function_of(consumer: str) -> str:
    """The function a pump consumer stands for: a Chalice handler by its name in the stage
    (`app:on_intake` → `on_intake`); a container handler by its entry point."""
    module, _, name = consumer.partition(":")
    return name if module == "app" else consumer


# -- what IAM checks for one call ------------------------------------------------------------
DYNAMODB_TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
# Batch APIs are authorized as their single-message actions.
SQS_ACTIONS = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
               "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}
# Object operations and the action each needs on the object (multipart parts are PUTs).
S3_OBJECT_ACTIONS = {"HeadObject": "GetObject", "GetObject": "GetObject",
                     "PutObject": "PutObject", "CreateMultipartUpload": "PutObject",
                     "UploadPart": "PutObject", "CompleteMultipartUpload": "PutObject",
                     "AbortMultipartUpload": "AbortMultipartUpload",
                     "ListParts": "ListMultipartUploadParts",
                     "PutObjectTagging": "PutObjectTagging",
                     "GetObjectTagging": "GetObjectTagging", "DeleteObject": "DeleteObject"}
S3_BUCKET_ACTIONS = {"ListObjectsV2": "ListBucket", "ListObjects": "ListBucket",
                     "HeadBucket": "ListBucket"}


def authorizations(service: str, operation: str, params: dict,
                   presigned: bool = False) -> list[tuple[str, str]]:
    """The (IAM action, resource) pairs one call needs."""
    if service == "dynamodb":
        return _dynamodb(operation, params)
    if service == "sqs":
        queue = params.get("QueueName") or str(params.get("QueueUrl", "*")).rstrip("/")
        return [(f"sqs:{SQS_ACTIONS.get(operation, operation)}", queue.rsplit("/", 1)[-1])]
    if service == "s3":
        return _s3(operation, params, presigned)
    return [(f"{service}:{operation}", "*")]


def _dynamodb(operation: str, params: dict) -> list[tuple[str, str]]:
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return [(f"dynamodb:{DYNAMODB_TRANSACT[kind]}", f"table/{item['TableName']}")
                for entry in params.get("TransactItems", []) for kind, item in entry.items()]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", f"table/{table}")
                for table in params.get("RequestItems", {})]
    table = f"table/{params.get('TableName', '*')}"
    if params.get("IndexName"):
        table += f"/index/{params['IndexName']}"
    return [(f"dynamodb:{operation}", table)]


def _object(bucket: str, key: str) -> str:
    """An object by its bucket and key prefix (the first path segment)."""
    prefix, slash, _ = key.partition("/")
    return f"{bucket}/{prefix}{slash}"


def _s3(operation: str, params: dict, presigned: bool) -> list[tuple[str, str]]:
    bucket = params.get("Bucket", "*")
    if operation in S3_BUCKET_ACTIONS:
        return [(f"s3:{S3_BUCKET_ACTIONS[operation]}", bucket)]
    target = _object(bucket, params.get("Key", ""))
    needs: list[tuple[str, str]] = []
    if operation in ("CopyObject", "UploadPartCopy"):
        source = params["CopySource"]
        if isinstance(source, str):
            source_bucket, _, source_key = source.lstrip("/").partition("/")
            source = {"Bucket": source_bucket, "Key": source_key.split("?")[0]}
        needs += [("s3:GetObject", _object(source["Bucket"], source["Key"])),
                  ("s3:ListBucket", source["Bucket"]), ("s3:PutObject", target)]
    else:
        needs.append((f"s3:{S3_OBJECT_ACTIONS.get(operation, operation)}", target))
        # The adapter tells a missing key (404) from a refusal; without s3:ListBucket on the
        # bucket S3 answers 403 for a key that does not exist. A URL's holder needs neither.
        if operation in ("HeadObject", "GetObject") and not presigned:
            needs.append(("s3:ListBucket", bucket))
    if params.get("Tagging") and operation in ("PutObject", "CopyObject",
                                               "CreateMultipartUpload"):
        needs.append(("s3:PutObjectTagging", target))
    return needs


# -- the recorder ----------------------------------------------------------------------------
class Recorder:
    """Appends each distinct (function, action, resource) this process sees to its file;
    the function is the one `function` names (`acting`, unless told otherwise)."""

    def __init__(self, directory: Path, function: contextvars.ContextVar[str | None] = acting):
        self.path = Path(directory) / f"calls-{os.getpid()}.jsonl"
        self._function = function
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, service: str, operation: str, params: dict, presigned: bool) -> None:
        function = self._function.get()
        if function is None:          # the stack's own plumbing, or a test's direct call
            return
        for action, resource in authorizations(service, operation, params, presigned):
            line = (function, action, resource)
            with self._lock:
                if line in self._seen:
                    continue
                self._seen.add(line)
                with open(self.path, "a") as out:
                    out.write(json.dumps({"function": function, "action": action,
                                          "resource": resource}) + "\n")


_installed: Recorder | None = None
_submit = ThreadPoolExecutor.submit


def _submit_in_context(self, fn, /, *args, **kwargs):
    """Thread pools (s3transfer's managed copies) run each task in its submitter's context,
    so a call made there is still its function's."""
    return _submit(self, contextvars.copy_context().run, fn, *args, **kwargs)


def install(directory: str | os.PathLike) -> Recorder:
    """Record this process's calls under `directory` (once per process)."""
    global _installed
    if _installed is None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        _installed = Recorder(Path(directory))
        aws.observers.append(_installed)
        ThreadPoolExecutor.submit = _submit_in_context
    return _installed


def install_from_environment() -> Recorder | None:
    directory = os.environ.get(ENVIRONMENT)
    return install(directory) if directory else None


def read(directory: str | os.PathLike) -> list[dict]:
    """Every line every process of a run recorded."""
    return [json.loads(line) for path in sorted(Path(directory).glob("calls-*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]
