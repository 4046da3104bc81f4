"""The local endpoint's TransactWriteItems (proofline/awsendpoint.py) rolls back only the
items a transaction touches: on a table of 1,000 items with the jobs table's indexes, a
cancelled transaction changes nothing (items and index queries read back as before), a
successful one applies every item, and the client sees the cancellation reasons stock moto
gives. Run over HTTP against an endpoint of the test's own."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import boto3
import moto
import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.exceptions import MultipleTransactionsException, TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends

from proofline.awsendpoint import MOTO_VERSION, AwsEndpoint, ItemRollbackBackend
from proofline.devstack import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 1000
STATES = ("queued", "running", "settled")
CLIENTS = tuple(f"did:client:{n}" for n in range(7))
INDEXES = {"by_state": ("state", "created_at"), "by_client": ("client", "created_at")}


def job(n: int, state: str | None = None, **extra) -> dict:
    """The n-th stored job, indexed by state and client as the jobs table's records are."""
    return {"pk": {"S": f"JOB#{n:06d}"}, "sk": {"S": "JOB"},
            "state": {"S": state or STATES[n % 3]},
            "created_at": {"S": f"2025-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"},
            "client": {"S": CLIENTS[n % 7]}, "version": {"N": "1"}, "doc": {"S": f"job {n}"},
            **extra}


def key(n: int, sk: str = "JOB") -> dict:
    return {"pk": {"S": f"JOB#{n:06d}"}, "sk": {"S": sk}}


def create_table(db, name: str) -> None:
    db.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                              for a in ("pk", "sk", "state", "client", "created_at")],
        GlobalSecondaryIndexes=[{
            "IndexName": index, "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": h, "KeyType": "HASH"},
                          {"AttributeName": r, "KeyType": "RANGE"}]}
            for index, (h, r) in INDEXES.items()])


def fill(db, name: str) -> None:
    for start in range(0, ITEMS, 25):
        db.batch_write_item(RequestItems={name: [
            {"PutRequest": {"Item": job(n)}} for n in range(start, min(ITEMS, start + 25))]})


@pytest.fixture(scope="module")
def db():
    endpoint = AwsEndpoint(ip_address=HOST, port=free_port(), verbose=False)
    endpoint.start()
    try:
        yield boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1").client("dynamodb",
                                            endpoint_url=f"http://{HOST}:{endpoint._port}")
    finally:
        endpoint.stop()


def test_the_endpoint_serves_dynamodb_from_the_item_rollback_backend(db):
    db.list_tables()
    assert type(dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]) is ItemRollbackBackend


@pytest.fixture
def table(db, request):
    name = re.sub(r"[^a-zA-Z0-9_.-]", "-", request.node.name)[:200]
    create_table(db, name)
    fill(db, name)
    yield name
    db.delete_table(TableName=name)


def everything(db, table: str) -> tuple[dict, dict]:
    """Every item by key, and every index query's result, in the order the index gives."""
    items, start = {}, {}
    while True:
        page = db.scan(TableName=table, ConsistentRead=True, **start)
        items.update({(i["pk"]["S"], i["sk"]["S"]): i for i in page["Items"]})
        if "LastEvaluatedKey" not in page:
            break
        start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
    queries = {}
    for index, values in (("by_state", STATES + ("failed",)), ("by_client", CLIENTS)):
        attribute = INDEXES[index][0]
        for value in values:
            paginator = db.get_paginator("query")
            queries[index, value] = [
                item for page in paginator.paginate(
                    TableName=table, IndexName=index, KeyConditionExpression="#a = :v",
                    ExpressionAttributeNames={"#a": attribute},
                    ExpressionAttributeValues={":v": {"S": value}})
                for item in page["Items"]]
    return items, queries


def mixed_transaction(table: str, last_condition_holds: bool, checked: int = 999) -> list[dict]:
    """A new item, an overwrite, an update that moves an item to another index partition, a
    delete, an update that creates its item, and a condition check on job `checked`."""
    return [
        {"Put": {"TableName": table, "ConditionExpression": "attribute_not_exists(pk)",
                 "Item": job(ITEMS + 1, "queued")}},
        {"Put": {"TableName": table, "Item": job(10, "failed", doc={"S": "overwritten"})}},
        {"Update": {"TableName": table, "Key": key(11),
                    "UpdateExpression": "SET #s = :s, version = version + :one REMOVE client",
                    "ConditionExpression": "version = :one",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {":s": {"S": "failed"}, ":one": {"N": "1"}}}},
        {"Delete": {"TableName": table, "Key": key(12)}},
        {"Update": {"TableName": table, "Key": key(ITEMS + 2),
                    "UpdateExpression": "SET #s = :s, created_at = :c, doc = :d",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {":s": {"S": "failed"}, ":d": {"S": "new"},
                                                  ":c": {"S": "2030-01-01T00:00:00Z"}}}},
        {"ConditionCheck": {"TableName": table, "Key": key(checked),
                            "ConditionExpression": "#s = :s",
                            "ExpressionAttributeNames": {"#s": "state"},
                            "ExpressionAttributeValues": {":s": {
                                "S": STATES[checked % 3] if last_condition_holds else "failed"}}}},
    ]


def cancelled(db, items: list[dict]) -> list[dict]:
    with pytest.raises(ClientError) as raised:
        db.transact_write_items(TransactItems=items)
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    return raised.value.response["CancellationReasons"]


def test_a_transaction_whose_last_condition_fails_changes_nothing(db, table):
    before = everything(db, table)
    assert len(before[0]) == ITEMS
    reasons = cancelled(db, mixed_transaction(table, last_condition_holds=False))
    assert [r["Code"] for r in reasons] == ["None"] * 5 + ["ConditionalCheckFailed"]
    after = everything(db, table)
    assert after[0] == before[0]                 # every item, those it wrote included
    assert after[1] == before[1]                 # every index query, in order
    assert not [k for k in after[0] if k[0] in (f"JOB#{ITEMS + 1:06d}", f"JOB#{ITEMS + 2:06d}")]


def test_a_successful_transaction_applies_every_item(db, table):
    items_before, _ = everything(db, table)
    db.transact_write_items(TransactItems=mixed_transaction(table, last_condition_holds=True))
    items, queries = everything(db, table)
    created = items.pop((f"JOB#{ITEMS + 1:06d}", "JOB"))
    assert created == job(ITEMS + 1, "queued")
    assert items.pop((f"JOB#{ITEMS + 2:06d}", "JOB")) == {
        **key(ITEMS + 2), "state": {"S": "failed"}, "doc": {"S": "new"},
        "created_at": {"S": "2030-01-01T00:00:00Z"}}
    assert items.pop(("JOB#000010", "JOB")) == job(10, "failed", doc={"S": "overwritten"})
    updated = items.pop(("JOB#000011", "JOB"))
    assert updated["state"] == {"S": "failed"} and updated["version"] == {"N": "2"}
    assert "client" not in updated
    assert ("JOB#000012", "JOB") not in items
    del items_before[("JOB#000010", "JOB")], items_before[("JOB#000011", "JOB")]
    del items_before[("JOB#000012", "JOB")]
    assert items == items_before                 # nothing else moved
    failed = [i["pk"]["S"] for i in queries["by_state", "failed"]]
    assert failed == ["JOB#000010", "JOB#000011", f"JOB#{ITEMS + 2:06d}"]   # by created_at
    assert "JOB#000011" not in {i["pk"]["S"] for i in queries["by_client", CLIENTS[11 % 7]]}


def test_a_transaction_that_creates_items_and_fails_leaves_none(db, table):
    before = everything(db, table)
    new = f"JOB#{ITEMS + 5:06d}"
    reasons = cancelled(db, [
        {"Put": {"TableName": table, "Item": job(ITEMS + 5, "failed")}},
        {"Put": {"TableName": table,
                 "Item": {**key(ITEMS + 5, "EVT#00000001"), "doc": {"S": "e"}}}},
        {"Update": {"TableName": table, "Key": key(ITEMS + 6),
                    "UpdateExpression": "SET #s = :s, created_at = :c",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {":s": {"S": "failed"},
                                                  ":c": {"S": "2030-01-01T00:00:00Z"}}}},
        {"Put": {"TableName": table, "ConditionExpression": "attribute_not_exists(pk)",
                 "ReturnValuesOnConditionCheckFailure": "ALL_OLD", "Item": job(3)}},
    ])
    assert [r["Code"] for r in reasons] == ["None", "None", "None", "ConditionalCheckFailed"]
    assert reasons[3]["Item"] == job(3)          # ALL_OLD: the stored item
    for k in (key(ITEMS + 5), key(ITEMS + 5, "EVT#00000001"), key(ITEMS + 6)):
        assert "Item" not in db.get_item(TableName=table, Key=k, ConsistentRead=True)
    assert not db.query(TableName=table, KeyConditionExpression="pk = :pk",
                        ExpressionAttributeValues={":pk": {"S": new}})["Items"]
    assert everything(db, table) == before


def test_an_invalid_transaction_is_refused_and_changes_nothing(db, table):
    """Two operations on one item: moto refuses the request (ValidationException) after
    applying the first; the endpoint undoes it."""
    before = everything(db, table)
    with pytest.raises(ClientError) as raised:
        db.transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": job(20, "failed")}},
            {"Delete": {"TableName": table, "Key": key(20)}}])
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert everything(db, table) == before


# -- the same transactions on stock moto's backend and on the endpoint's, side by side -----

def backend_pair() -> list[DynamoDBBackend]:
    backends = [DynamoDBBackend("us-east-1", "123456789012"),
                ItemRollbackBackend("us-east-1", "123456789012")]
    for backend in backends:
        backend.create_table(
            "jobs", schema=[{"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "sk", "KeyType": "RANGE"}],
            throughput=None, billing_mode="PAY_PER_REQUEST",
            attr=[{"AttributeName": a, "AttributeType": "S"}
                  for a in ("pk", "sk", "state", "client", "created_at")],
            global_indexes=[{"IndexName": i, "Projection": {"ProjectionType": "ALL"},
                             "KeySchema": [{"AttributeName": h, "KeyType": "HASH"},
                                           {"AttributeName": r, "KeyType": "RANGE"}]}
                            for i, (h, r) in INDEXES.items()],
            indexes=[], streams=None, sse_specification=None, tags=[],
            deletion_protection_enabled=False, warm_throughput=None)
        backend.create_table(                    # as the idempotency table: no range key
            "ids", schema=[{"AttributeName": "id", "KeyType": "HASH"}], throughput=None,
            billing_mode="PAY_PER_REQUEST", attr=[{"AttributeName": "id", "AttributeType": "S"}],
            global_indexes=[], indexes=[], streams=None, sse_specification=None, tags=[],
            deletion_protection_enabled=False, warm_throughput=None)
        for n in range(50):
            backend.put_item("jobs", job(n))
            backend.put_item("ids", {"id": {"S": f"id-{n}"}, "n": {"N": str(n)}})
    return backends


def stored(backend: DynamoDBBackend) -> list[list[dict]]:
    return [[item.to_json()["Attributes"] for item in backend.get_table(name).all_items()]
            for name in ("jobs", "ids")]


CASES = {
    "last condition fails": mixed_transaction("jobs", last_condition_holds=False, checked=30),
    "all old on a failed put": [
        {"Delete": {"TableName": "jobs", "Key": key(1)}},
        {"Put": {"TableName": "jobs", "ConditionExpression": "attribute_not_exists(pk)",
                 "ReturnValuesOnConditionCheckFailure": "ALL_OLD", "Item": job(2)}},
        {"ConditionCheck": {"TableName": "jobs", "Key": key(3),
                            "ConditionExpression": "attribute_not_exists(pk)",
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}],
    "a missing table": [
        {"Put": {"TableName": "jobs", "Item": job(60)}},
        {"Put": {"TableName": "no-such-table", "Item": job(61)}},
        {"Delete": {"TableName": "jobs", "Key": key(4)}}],
    "an update moto refuses": [
        {"Put": {"TableName": "jobs", "Item": job(60)}},
        {"Update": {"TableName": "jobs", "Key": key(4),
                    "UpdateExpression": "SET version = version + :x",
                    "ExpressionAttributeValues": {":x": {"S": "not a number"}}}}],
    "no range key": [
        {"Put": {"TableName": "ids", "Item": {"id": {"S": "id-new"}}}},
        {"Update": {"TableName": "ids", "Key": {"id": {"S": "id-1"}},
                    "UpdateExpression": "SET n = :n",
                    "ExpressionAttributeValues": {":n": {"N": "100"}}}},
        {"Delete": {"TableName": "ids", "Key": {"id": {"S": "id-2"}}}},
        {"Update": {"TableName": "ids", "Key": {"id": {"S": "id-created"}},
                    "UpdateExpression": "SET n = :n",
                    "ExpressionAttributeValues": {":n": {"N": "1"}}}},
        {"ConditionCheck": {"TableName": "ids", "Key": {"id": {"S": "id-3"}},
                            "ConditionExpression": "attribute_not_exists(id)"}}],
    "succeeds": mixed_transaction("jobs", last_condition_holds=True, checked=30),
}


@pytest.mark.parametrize("case", CASES)
def test_the_endpoint_backend_answers_as_stock_moto_does(case):
    stock, ours = backend_pair()
    outcomes = []
    for backend in (stock, ours):
        try:
            backend.transact_write_items(copy.deepcopy(CASES[case]))
            outcomes.append(("applied",))
        except Exception as error:  # noqa: BLE001 - moto's errors: what the client receives
            outcomes.append((type(error).__name__, str(error), getattr(error, "description", None)))
    assert outcomes[0] == outcomes[1]            # the same error, message and reasons
    expected = {"succeeds": "applied", "an update moto refuses": "IncorrectOperandType"}
    assert outcomes[0][0] == expected.get(case, "TransactionCanceledException")
    assert stored(stock) == stored(ours)


def test_refusals_undo_what_was_applied_as_stock_moto_does():
    stock, ours = backend_pair()
    items = [{"Put": {"TableName": "jobs", "Item": job(70)}},
             {"Update": {"TableName": "jobs", "Key": key(5), "UpdateExpression": "SET doc = :d",
                         "ExpressionAttributeValues": {":d": {"S": "changed"}}}},
             {"Delete": {"TableName": "jobs", "Key": key(5)}}]
    for backend in (stock, ours):
        with pytest.raises(MultipleTransactionsException):
            backend.transact_write_items(copy.deepcopy(items))
    assert stored(stock) == stored(ours) == stored(backend_pair()[0])


def test_a_transaction_copies_no_table():
    """moto's own rollback deep-copies each table a transaction names; the endpoint's copies
    only the items, so its cost does not grow with the table."""
    _, ours = backend_pair()
    table = ours.get_table("jobs")

    def refuse(memo):
        raise AssertionError("the whole table was copied")

    table.__deepcopy__ = refuse
    with pytest.raises(TransactionCanceledException):
        ours.transact_write_items(mixed_transaction("jobs", last_condition_holds=False, checked=30))
    ours.transact_write_items(mixed_transaction("jobs", last_condition_holds=True, checked=30))
    assert ours.get_table("jobs") is table


def test_moto_is_pinned_to_the_version_the_endpoint_replaces_a_part_of():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = project["optional-dependencies"]["dev"]
    assert f"moto[server]=={MOTO_VERSION}" in dev
    assert moto.__version__ == MOTO_VERSION


def test_a_cancelled_transaction_leaves_no_stream_records_as_stock_moto_does():
    records = []
    for backend in (DynamoDBBackend("us-east-1", "123456789012"),
                    ItemRollbackBackend("us-east-1", "123456789012")):
        backend.create_table(
            "ids", schema=[{"AttributeName": "id", "KeyType": "HASH"}], throughput=None,
            billing_mode="PAY_PER_REQUEST", attr=[{"AttributeName": "id", "AttributeType": "S"}],
            global_indexes=[], indexes=[], sse_specification=None, tags=[],
            streams={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
            deletion_protection_enabled=False, warm_throughput=None)
        backend.put_item("ids", {"id": {"S": "id-1"}})
        with pytest.raises(TransactionCanceledException):
            backend.transact_write_items([
                {"Put": {"TableName": "ids", "Item": {"id": {"S": "id-2"}}}},
                {"Delete": {"TableName": "ids", "Key": {"id": {"S": "id-1"}}}},
                {"ConditionCheck": {"TableName": "ids", "Key": {"id": {"S": "id-3"}},
                                    "ConditionExpression": "attribute_exists(id)"}}])
        backend.put_item("ids", {"id": {"S": "id-4"}})
        records.append([(r.record["eventName"], r.record["dynamodb"]["Keys"])
                       for r in backend.get_table("ids").stream_shard.items])
    assert records[0] == records[1] == [("INSERT", {"id": {"S": "id-1"}}),
                                      ("INSERT", {"id": {"S": "id-4"}})]
