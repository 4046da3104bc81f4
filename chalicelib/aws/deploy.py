"""Post-deploy fix-ups for what Chalice cannot configure itself.

Chalice creates the SQS event source mappings for `@app.on_sqs_message` handlers but cannot
set `FunctionResponseTypes: [ReportBatchItemFailures]` on them (chalice issue #2029). Without
it Lambda ignores the `batchItemFailures` a handler returns and retries the whole batch, so
after `chalice deploy` we turn partial batch responses on through the Lambda API.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"


def _is_sqs(event_source_arn: str | None) -> bool:
    # arn:<partition>:sqs:<region>:<account>:<queue>
    parts = (event_source_arn or "").split(":")
    return len(parts) > 2 and parts[2] == "sqs"


def enable_partial_batch_responses(lambda_client: Any,
                                   function_names: Iterable[str]) -> list[dict]:
    """Turn on ReportBatchItemFailures for every SQS event source mapping of each function.

    Works around chalice issue #2029 (Chalice cannot set FunctionResponseTypes on the SQS
    event sources it creates). Idempotent: mappings that already report batch item failures
    are left alone. Returns one {function, uuid, queue_arn, changed} per SQS mapping.
    """
    results: list[dict] = []
    paginator = lambda_client.get_paginator("list_event_source_mappings")
    for function in function_names:
        for page in paginator.paginate(FunctionName=function):
            for mapping in page.get("EventSourceMappings", []):
                queue_arn = mapping.get("EventSourceArn")
                if not _is_sqs(queue_arn):
                    continue
                types = mapping.get("FunctionResponseTypes") or []
                changed = REPORT_BATCH_ITEM_FAILURES not in types
                if changed:
                    lambda_client.update_event_source_mapping(
                        UUID=mapping["UUID"],
                        FunctionResponseTypes=[REPORT_BATCH_ITEM_FAILURES],
                    )
                results.append({"function": function, "uuid": mapping["UUID"],
                                "queue_arn": queue_arn, "changed": changed})
    return results
