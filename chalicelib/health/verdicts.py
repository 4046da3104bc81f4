"""What a stage's checks conclude: one `Check` per resource or key, with a sentence that
says what is wrong and what to do, and the comparisons behind them (a table's shape, a
queue's redrive, a bucket's notification, an event source mapping, a contract's code).

Pure: the checks' I/O is in `health.checks`; this module only judges what they fetched.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"


@dataclass(frozen=True)
class Check:
    """`ok`: True passed, False failed, None not checked from here (`detail` says why)."""
    name: str
    ok: bool | None
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping) -> "Check":
        return cls(str(data["name"]), data.get("ok"), str(data.get("detail", "")))


def verdict(name: str, problems: list[str], fine: str) -> Check:
    """Failed with every problem named, or passed with what was seen."""
    return Check(name, not problems, "; ".join(problems) if problems else fine)


def healthy(checks: Iterable[Check]) -> bool:
    """Nothing failed (a check not made here is not a failure)."""
    return all(check.ok is not False for check in checks)


def report(stage: str | None, checks: list[Check]) -> dict:
    """The JSON both halves answer: `{ok, stage, checks: [{name, ok, detail}]}`."""
    return {"ok": healthy(checks), "stage": stage, "checks": [c.to_json() for c in checks]}


# -- DynamoDB ------------------------------------------------------------------------------
def table_problems(table: Mapping, ttl: Mapping | None, *, hash_key: str,
                   range_key: str | None, indexes: Mapping[str, tuple[str, str]],
                   ttl_attribute: str | None) -> list[str]:
    """`table`: DescribeTable's `Table`; `ttl`: DescribeTimeToLive's description."""
    problems = []
    name = table.get("TableName", "the table")
    status = table.get("TableStatus")
    if status != "ACTIVE":
        problems.append(f"{name} is {status}, not ACTIVE: wait for it, or read the stack's "
                        "CloudFormation events")
    expected = _keys([(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else []))
    if _keys((k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])) != expected:
        problems.append(f"{name}'s key is {_key_words(table.get('KeySchema', []))}, the code "
                        f"expects {expected}: it was made by something else; recreate it from "
                        "template.yaml")
    found = {i["IndexName"]: i for i in table.get("GlobalSecondaryIndexes", [])}
    for index, (index_hash, index_range) in indexes.items():
        gsi = found.get(index)
        if gsi is None:
            problems.append(f"{name} has no index {index}: the queries that use it fail; "
                            "update the stack from template.yaml")
            continue
        keys = _keys((k["AttributeName"], k["KeyType"]) for k in gsi.get("KeySchema", []))
        if keys != _keys([(index_hash, "HASH"), (index_range, "RANGE")]):
            problems.append(f"{name}'s index {index} is keyed {keys}, not "
                            f"({index_hash}, {index_range}): recreate it from template.yaml")
        if gsi.get("IndexStatus", "ACTIVE") != "ACTIVE":
            problems.append(f"{name}'s index {index} is {gsi['IndexStatus']} (still "
                            "backfilling): queries on it wait until it is ACTIVE")
    if ttl_attribute:
        status = (ttl or {}).get("TimeToLiveStatus", "DISABLED")
        attribute = (ttl or {}).get("AttributeName")
        if status not in ("ENABLED", "ENABLING") or attribute != ttl_attribute:
            problems.append(f"{name}'s TTL is {status}"
                            + (f" on {attribute!r}" if attribute else "")
                            + f", not on {ttl_attribute!r}: its records never expire; turn TTL "
                            f"on for {ttl_attribute!r} (template.yaml declares it)")
    return problems


def _keys(pairs) -> str:
    ordered = sorted(pairs, key=lambda pair: pair[1])       # HASH before RANGE
    return "(" + ", ".join(name for name, _ in ordered) + ")"


def _key_words(schema) -> str:
    return _keys((k["AttributeName"], k["KeyType"]) for k in schema)


# -- SQS -----------------------------------------------------------------------------------
def redrive_of(attributes: Mapping) -> dict | None:
    raw = attributes.get("RedrivePolicy")
    if not raw:
        return None
    try:
        policy = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError:
        return None
    return policy if isinstance(policy, dict) else None


def queue_problems(name: str, attributes: Mapping, *, max_receive_count: int,
                   visibility_timeout: int | None) -> list[str]:
    """A queue's redrive policy and (where `visibility_timeout` is given) its timeout,
    against the resource definition."""
    problems = []
    policy = redrive_of(attributes)
    if policy is None or not policy.get("deadLetterTargetArn"):
        problems.append(f"{name} has no redrive policy: a message that always fails is retried "
                        "until it expires and never reaches a dead-letter queue; set "
                        f"RedrivePolicy to {name}-dlq with maxReceiveCount {max_receive_count} "
                        "(template.yaml does)")
    elif str(policy.get("maxReceiveCount")) != str(max_receive_count):
        problems.append(f"{name} dead-letters after {policy.get('maxReceiveCount')} receives, "
                        f"the definition says {max_receive_count} (chalicelib/aws/resources.py): "
                        "update the stack from template.yaml")
    if visibility_timeout is not None:
        seen = attributes.get("VisibilityTimeout")
        if str(seen) != str(visibility_timeout):
            problems.append(f"{name}'s visibility timeout is {seen} s, the definition says "
                            f"{visibility_timeout} s: it must outlast its consumer's timeout, "
                            "or records come back while still being worked")
    return problems


# -- S3 ------------------------------------------------------------------------------------
def notification_problems(bucket: str, configuration: Mapping, queue: str,
                          queue_arn: str) -> list[str]:
    """The bucket's notification configuration sends every created object to `queue_arn`."""
    for target in configuration.get("QueueConfigurations", []):
        if target.get("QueueArn") != queue_arn:
            continue
        events = set(target.get("Events", []))
        if "s3:ObjectCreated:*" in events or {"s3:ObjectCreated:Put", "s3:ObjectCreated:Post",
                                              "s3:ObjectCreated:Copy",
                                              "s3:ObjectCreated:CompleteMultipartUpload"} <= events:
            rules = (target.get("Filter") or {}).get("Key", {}).get("FilterRules", [])
            if rules:
                return [f"{bucket} notifies {queue} only for keys matching "
                        f"{[r.get('Value') for r in rules]}: drops and uploads elsewhere are "
                        "never seen; remove the filter"]
            return []
        return [f"{bucket} notifies {queue} of {sorted(events)} only, not s3:ObjectCreated:*: "
                "some drops and uploads are never seen"]
    return [f"{bucket} sends no s3:ObjectCreated:* notification to {queue}: drops and uploads "
            "are never seen (no job, no promoted upload); put the notification back "
            "(template.yaml's NotificationConfiguration)"]


# -- Lambda --------------------------------------------------------------------------------
def mapping_problems(queue: str, mappings: list[Mapping], *, consumer: str,
                     batch_size: int) -> list[str]:
    """The event source mappings that consume `queue`: one, enabled, reporting batch item
    failures, with the batch size of the definition."""
    if not mappings:
        return [f"nothing consumes {queue}: no Lambda event source mapping reads it (its "
                f"consumer is {consumer}); its messages pile up until they expire. Deploy the "
                "function that consumes it (template.yaml or `chalice package`)"]
    problems = []
    if len(mappings) > 1:
        problems.append(f"{len(mappings)} functions consume {queue} "
                        f"({', '.join(_function(m) for m in mappings)}): each record goes to "
                        "one of them at random; remove the stale mapping")
    for mapping in mappings:
        function = _function(mapping)
        if mapping.get("State") not in ("Enabled", "Enabling", "Updating"):
            problems.append(f"the mapping from {queue} to {function} is "
                            f"{mapping.get('State')}: nothing is delivered; enable it")
        if REPORT_BATCH_ITEM_FAILURES not in (mapping.get("FunctionResponseTypes") or []):
            problems.append(f"the mapping from {queue} to {function} does not report batch "
                            "item failures: Lambda ignores the batchItemFailures its handler "
                            "returns and deletes the whole batch, the records it reported as "
                            "failed included; run `proofline ops "
                            f"enable-batch-failures {function}` (or deploy with "
                            ".chalice/package-template.json)")
        if mapping.get("BatchSize") not in (None, batch_size):
            problems.append(f"the mapping from {queue} to {function} delivers batches of "
                            f"{mapping['BatchSize']}, the definition says {batch_size}")
    return problems


def _function(mapping: Mapping) -> str:
    return str(mapping.get("FunctionArn", "?")).rsplit(":", 1)[-1]


# -- the chain -----------------------------------------------------------------------------
def split_metadata(code: bytes) -> tuple[bytes, bytes]:
    """(code, its CBOR metadata) — solc appends the metadata and its 2-byte length."""
    if len(code) < 2:
        return code, b""
    length = int.from_bytes(code[-2:], "big")
    start = len(code) - 2 - length
    if length and start >= 0 and 0xa1 <= code[start] <= 0xa7:       # a CBOR map
        return code[:start], code[start:]
    return code, b""


def code_verdict(deployed: bytes, creation: bytes, *, contract: str, address: str,
                 chain_id: int | None) -> tuple[bool, str]:
    """Is `deployed` (eth_getCode) the runtime code of the artifact whose creation code is
    `creation`? The runtime ends the creation code; it is compared byte for byte except
    where its template holds zeros for immutables (set by the constructor: the EIP-712
    domain, the deployer's chain), and the metadata hash is compared on its own (it differs
    when the same code is built from other sources or settings)."""
    where = f"{address} on chain {chain_id}"
    if not deployed:
        return False, (f"there is no contract at {where}: ESCROW_ADDRESS is wrong for this "
                       "chain, or the deployment did not happen; deploy "
                       f"chalicelib/settlement/artifacts/{contract}.json (docs/deployment.md) "
                       "and set ESCROW_ADDRESS")
    body, metadata = split_metadata(deployed)
    template_all, template_metadata = split_metadata(creation)
    template = template_all[-len(body):] if len(template_all) >= len(body) else b""
    differing = [i for i in range(len(template)) if body[i] != template[i]]
    if len(template) != len(body) or any(template[i] for i in differing):
        return False, (f"the code at {where} ({len(deployed):,} bytes) is not {contract}'s "
                       f"(chalicelib/settlement/artifacts/{contract}.json): ESCROW_ADDRESS names "
                       "another contract or an older build; point it at the escrow deployed "
                       "from this artifact, or redeploy it")
    words = (f"{contract}'s runtime code ({len(deployed):,} bytes) at {where}, byte for byte "
             f"but {len(differing)} bytes of immutables set by its constructor")
    if metadata != template_metadata:
        words += ("; its metadata hash differs from the artifact's (the same code built from "
                  "other sources or settings): rebuild with `make contracts` to compare exactly")
    return True, words
