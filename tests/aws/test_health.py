"""The verdicts behind `proofline doctor` and `GET /health?deep=1`, on what AWS and the chain
answer (no stack): each problem is named in words, and a healthy shape passes."""
from __future__ import annotations

import json

import pytest

from chalicelib.health.checks import guarded
from chalicelib.health.verdicts import (
    Check,
    code_verdict,
    healthy,
    mapping_problems,
    notification_problems,
    queue_problems,
    report,
    split_metadata,
    table_problems,
)
from chalicelib.settlement.chain import artifact

ARN = "arn:aws:sqs:us-east-1:123456789012:proofline-dev-intake"


def test_a_check_not_made_here_is_not_a_failure():
    checks = [Check("a", True, ""), Check("b", None, "not here")]
    assert healthy(checks) and report("dev", checks)["ok"] is True
    failed = report("dev", checks + [Check("c", False, "broken")])
    assert failed["ok"] is False and failed["checks"][2] == {"name": "c", "ok": False,
                                                             "detail": "broken"}


def test_a_check_that_breaks_itself_is_one_failed_check_not_a_crash():
    def broken():
        raise KeyError("Attributes")
    assert guarded("queues", broken) == [Check("queues", False, "the check itself failed: "
                                                "KeyError: 'Attributes'")]


def _table(**changes) -> dict:
    table = {"TableName": "jobs", "TableStatus": "ACTIVE",
             "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}],
             "GlobalSecondaryIndexes": [{"IndexName": "by_state", "IndexStatus": "ACTIVE",
                                         "KeySchema": [
                                             {"AttributeName": "state", "KeyType": "HASH"},
                                             {"AttributeName": "created_at", "KeyType": "RANGE"}]}]}
    return {**table, **changes}


def _table_problems(table, ttl=None, ttl_attribute=None):
    return table_problems(table, ttl, hash_key="pk", range_key="sk",
                          indexes={"by_state": ("state", "created_at")},
                          ttl_attribute=ttl_attribute)


def test_a_table_of_the_definitions_shape_passes_and_each_difference_is_named():
    assert _table_problems(_table()) == []
    assert "is CREATING, not ACTIVE" in _table_problems(_table(TableStatus="CREATING"))[0]
    assert "has no index by_state" in _table_problems(_table(GlobalSecondaryIndexes=[]))[0]
    wrong_key = _table(KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    assert "key is (id), the code expects (pk, sk)" in _table_problems(wrong_key)[0]
    off = _table_problems(_table(), {"TimeToLiveStatus": "DISABLED"}, ttl_attribute="expiration")
    assert "TTL is DISABLED" in off[0] and "'expiration'" in off[0]
    on = {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiration"}
    assert _table_problems(_table(), on, ttl_attribute="expiration") == []


def test_a_queue_without_redrive_or_with_another_count_is_named():
    redrive = json.dumps({"deadLetterTargetArn": ARN + "-dlq", "maxReceiveCount": "5"})
    good = {"RedrivePolicy": redrive, "VisibilityTimeout": "60"}
    assert queue_problems("q", good, max_receive_count=5, visibility_timeout=60) == []
    assert "q has no redrive policy" in queue_problems("q", {}, max_receive_count=5,
                                                       visibility_timeout=None)[0]
    assert "after 5 receives, the definition says 3" in queue_problems(
        "q", good, max_receive_count=3, visibility_timeout=None)[0]
    assert "visibility timeout is 60 s, the definition says 900 s" in queue_problems(
        "q", good, max_receive_count=5, visibility_timeout=900)[0]


def test_the_intake_notification_must_send_every_created_object_to_the_queue():
    every = {"QueueConfigurations": [{"QueueArn": ARN, "Events": ["s3:ObjectCreated:*"]}]}
    assert notification_problems("b", every, "intake", ARN) == []
    assert "sends no s3:ObjectCreated:* notification to intake" in notification_problems(
        "b", {}, "intake", ARN)[0]
    assert "sends no" in notification_problems(
        "b", {"QueueConfigurations": [{"QueueArn": ARN + "-other",
                                       "Events": ["s3:ObjectCreated:*"]}]}, "intake", ARN)[0]
    puts = {"QueueConfigurations": [{"QueueArn": ARN, "Events": ["s3:ObjectCreated:Put"]}]}
    assert "not s3:ObjectCreated:*" in notification_problems("b", puts, "intake", ARN)[0]
    filtered = {"QueueConfigurations": [{"QueueArn": ARN, "Events": ["s3:ObjectCreated:*"],
                                         "Filter": {"Key": {"FilterRules": [
                                             {"Name": "prefix", "Value": "intake/"}]}}}]}
    assert "only for keys matching" in notification_problems("b", filtered, "intake", ARN)[0]


def _mapping(**changes) -> dict:
    return {"FunctionArn": "arn:aws:lambda:us-east-1:1:function:proofline-dev-on_intake",
            "State": "Enabled", "BatchSize": 10,
            "FunctionResponseTypes": ["ReportBatchItemFailures"], **changes}


def test_an_event_source_must_exist_be_enabled_and_report_batch_item_failures():
    check = dict(consumer="app:on_intake", batch_size=10)
    assert mapping_problems("intake", [_mapping()], **check) == []
    assert "nothing consumes intake" in mapping_problems("intake", [], **check)[0]
    whole = mapping_problems("intake", [_mapping(FunctionResponseTypes=[])], **check)
    assert "does not report batch item failures" in whole[0]
    assert "proofline ops enable-batch-failures proofline-dev-on_intake" in whole[0]
    assert "is Disabled" in mapping_problems("intake", [_mapping(State="Disabled")], **check)[0]
    assert "batches of 1, the definition says 10" in mapping_problems(
        "intake", [_mapping(BatchSize=1)], **check)[0]
    assert "2 functions consume intake" in mapping_problems(
        "intake", [_mapping(), _mapping()], **check)[0]


@pytest.fixture(scope="module")
def creation() -> bytes:
    return bytes.fromhex(artifact("ProoflineEscrow")["bytecode"].removeprefix("0x"))


def _runtime(creation: bytes, immutables: dict[int, bytes]) -> bytes:
    """What the constructor leaves on chain: the runtime that ends the creation code,
    its zeroed immutables filled in."""
    start = creation.rfind(bytes.fromhex("6080604052"))       # the runtime's preamble
    code = bytearray(creation[start:])
    for at, value in immutables.items():
        code[at:at + len(value)] = value
    return bytes(code)


def test_the_escrows_code_matches_its_artifact_but_for_immutables_and_is_refused_otherwise(
        creation):
    body, metadata = split_metadata(creation)
    assert metadata and metadata[0] == 0xa2 and body + metadata == creation
    zeros = _runtime(creation, {}).find(bytes(32))
    deployed = _runtime(creation, {zeros: b"\x01" * 32})
    ok, words = code_verdict(deployed, creation, contract="ProoflineEscrow", address="0xE",
                             chain_id=1)
    assert ok and "32 bytes of immutables" in words and "metadata" not in words

    other_metadata = deployed[:-10] + b"\x07" * 8 + deployed[-2:]
    ok, words = code_verdict(other_metadata, creation, contract="ProoflineEscrow",
                             address="0xE", chain_id=1)
    assert ok and "metadata hash differs" in words

    tampered = bytearray(deployed)
    tampered[100] ^= 0xff
    ok, words = code_verdict(bytes(tampered), creation, contract="ProoflineEscrow",
                             address="0xE", chain_id=1)
    assert not ok and "is not ProoflineEscrow's" in words

    ok, words = code_verdict(b"", creation, contract="ProoflineEscrow", address="0xE",
                             chain_id=1)
    assert not ok and "there is no contract at 0xE on chain 1" in words
