"""DynamoDB records of the worker registry (`pk = WORKER#<did>`), listed through the
`by_state` index (state `worker`) so routing never scans; and the nonces of signed
requests, kept once each in the idempotency table."""
from __future__ import annotations

import time
from datetime import datetime

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import ValidationError

from chalicelib.aws.store import stamp
from chalicelib.errors import Conflict
from chalicelib.market.registry import WORKER_STATE, Worker, WorkerNotFound
from chalicelib.market.router import Candidate

logger = Logger(service="proofline")


class WorkerStore:
    CANDIDATES_MAX_AGE_S = 2.0        # a planner routes many tasks at once off one read

    def __init__(self, client, table: str):
        self._db = client
        self._table = table
        self._candidates: tuple[float, list[Worker]] | None = None

    def candidates(self, now: datetime) -> list[Candidate]:
        """The registry as the router sees it, read at most every CANDIDATES_MAX_AGE_S, from
        each record's routing projection (no challenge history, no address)."""
        if self._candidates is None or time.monotonic() - self._candidates[0] > \
                self.CANDIDATES_MAX_AGE_S:
            self._candidates = (time.monotonic(), self._routable())
        return [c for w in self._candidates[1] if (c := w.candidate(now)) is not None]

    def _routable(self) -> list[Worker]:
        workers = []
        for item in self._query_state(ProjectionExpression="#r",
                                      ExpressionAttributeNames={"#s": "state", "#r": "route"}):
            if "route" in item:      # written with every heartbeat: a live worker has one
                worker = _readable(item, "route")
                if worker is not None:
                    workers.append(worker)
        return workers

    def create(self, worker: Worker) -> None:
        try:
            self._put(worker, "attribute_not_exists(pk)", {})
        except _Moved:
            raise Conflict(f"worker {worker.did} is registered already",
                           reason="worker_exists") from None

    def commit(self, expected: Worker, worker: Worker) -> None:
        """Replace `expected` by `worker`; Conflict if it changed in between."""
        try:
            self._put(worker, "version = :expected",
                      {":expected": {"N": str(expected.version)}})
        except _Moved:
            raise Conflict(f"worker {worker.did} changed; try again",
                           reason="worker_changed") from None

    def get(self, did: str) -> Worker:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": _pk(did)}, "sk": {"S": "JOB"}}).get("Item")
        if not item:
            raise WorkerNotFound(f"no worker {did!r}")
        return Worker.model_validate_json(item["doc"]["S"])

    def list(self, limit: int = 1000, before: str | None = None) -> list[Worker]:
        """Newest registration first, registered before `before` (a `stamp`) when given."""
        workers: list[Worker] = []
        for item in self._query_state(before=before):
            if (worker := _readable(item, "doc")) is not None:
                workers.append(worker)
            if len(workers) >= limit:
                break
        return workers

    def _query_state(self, before: str | None = None, **options):
        window = " AND created_at < :before" if before else ""
        names = options.pop("ExpressionAttributeNames", {"#s": "state"})
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(
                TableName=self._table, IndexName="by_state", ScanIndexForward=False,
                KeyConditionExpression="#s = :s" + window, ExpressionAttributeNames=names,
                ExpressionAttributeValues={":s": {"S": WORKER_STATE},
                                           **({":before": {"S": before}} if before else {})},
                **options):
            yield from page["Items"]

    def _put(self, worker: Worker, condition: str, values: dict) -> None:
        request = {"TableName": self._table, "ConditionExpression": condition,
                   "Item": {"pk": {"S": _pk(worker.did)}, "sk": {"S": "JOB"},
                            "state": {"S": WORKER_STATE},
                            "created_at": {"S": stamp(worker.registered_at)},
                            "version": {"N": str(worker.version)},
                            "doc": {"S": worker.model_dump_json()},
                            "route": {"S": worker.model_dump_json(include=ROUTED)}}}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self._db.put_item(**request)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise _Moved() from exc
            raise


class _Moved(Exception):
    pass


def _pk(did: str) -> str:
    return f"WORKER#{did}"


# What routing reads of a worker record (Worker.candidate), kept beside the full document.
ROUTED = {"did", "address", "claims", "verified", "health", "last_heartbeat", "registered_at",
          "updated_at", "reputation", "version"}


def _readable(item: dict, attribute: str) -> Worker | None:
    """The worker in `attribute` of an item, or None (logged): one bad record must not take
    the whole registry view down with it."""
    try:
        return Worker.model_validate_json(item[attribute]["S"])
    except (KeyError, ValidationError) as error:
        logger.warning("unreadable worker item left out", extra={
            "pk": item.get("pk", {}).get("S"), "error": str(error)[:300]})
        return None


class DynamoNonceStore:
    """Nonces of signed requests, once each: a conditional put in the idempotency table,
    whose TTL removes them after the request's expiry."""

    def __init__(self, client, table: str):
        self._db = client
        self._table = table

    def use(self, did: str, nonce: int, expires_at: int) -> bool:
        try:
            self._db.put_item(TableName=self._table,
                              Item={"id": {"S": f"nonce#{did}#{nonce}"},
                                    "expiration": {"N": str(int(expires_at))}},
                              ConditionExpression="attribute_not_exists(id)")
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise

    def used(self, did: str, nonce: int) -> bool:
        return "Item" in self._db.get_item(TableName=self._table, ConsistentRead=True,
                                           Key={"id": {"S": f"nonce#{did}#{nonce}"}},
                                           ProjectionExpression="id")
