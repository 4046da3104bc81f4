"""DynamoDB adapter for the tasks of a split job, kept in the job's partition.

`sk = TASK#<id>` holds a task, `EVT#T#<id>#<version>` its timeline entries (the job's
timeline Query returns them along with the job's own), and `PROGRESS` the count of passed
tasks. A task offered to or leased by a marketplace worker is also in the sparse
`by_deadline` index (`due_state = task:<state>`), so the sweeper finds lapsed offers and
leases without scanning, and the worker's partition holds an `OFFER#<job>#<task>` pointer,
so a lease reads only that worker's offers. Tasks change with single conditional writes on their own version, never through the
job record: many workers finish segments at once, and none of them contends with the others.
"""
from __future__ import annotations

from typing import Iterable

from botocore.exceptions import ClientError

from chalicelib.aws.store import _pk, stamp
from chalicelib.errors import StaleVersion
from chalicelib.models import Event, Task, TaskState

TASK_PREFIX = "TASK#"
PROGRESS_SK = "PROGRESS"
OFFER_PREFIX = "OFFER#"
SIGN_PREFIX = "SIGN#"
DUE_STATES = tuple(f"task:{s.value}" for s in (TaskState.ASSIGNED, TaskState.RUNNING))


class TaskStore:
    def __init__(self, client, table: str):
        self._db = client
        self._table = table

    def create(self, tasks: Iterable[Task]) -> int:
        """Write tasks that do not exist yet (a re-run planner keeps what is there); returns
        how many were new."""
        created = 0
        for task in tasks:
            try:
                self._put(task, "attribute_not_exists(sk)", {})
                created += 1
            except StaleVersion:
                pass
        return created

    def get(self, job_id: str, task_id: str) -> Task:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": _pk(job_id)},
                                      "sk": {"S": TASK_PREFIX + task_id}}).get("Item")
        if not item:
            raise KeyError(f"job {job_id} has no task {task_id}")
        return Task.model_validate_json(item["doc"]["S"])

    def list(self, job_id: str) -> list[Task]:
        paginator = self._db.get_paginator("query")
        tasks = []
        for page in paginator.paginate(
                TableName=self._table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={":pk": {"S": _pk(job_id)},
                                           ":prefix": {"S": TASK_PREFIX}}):
            tasks += [Task.model_validate_json(i["doc"]["S"]) for i in page["Items"]]
        return tasks

    def commit(self, expected: Task, task: Task, events: Iterable[Event] = ()) -> None:
        """Replace `expected` by `task` (StaleVersion if it moved), then append its events."""
        self._put(task, "version = :expected", {":expected": {"N": str(expected.version)}})
        for event in events:
            self._db.put_item(TableName=self._table, Item={
                "pk": {"S": _pk(task.job_id)},
                "sk": {"S": f"EVT#T#{task.task_id}#{event.seq:04d}"},
                "doc": {"S": event.model_dump_json()}})

    def count_passed(self, job_id: str) -> int:
        """Add one passed task; returns the new count (atomic, so exactly one caller sees
        the last task pass)."""
        response = self._db.update_item(
            TableName=self._table, Key={"pk": {"S": _pk(job_id)}, "sk": {"S": PROGRESS_SK}},
            UpdateExpression="ADD passed :one", ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW")
        return int(response["Attributes"]["passed"]["N"])

    # -- marketplace offers and leases ------------------------------------------------------
    def offer(self, task: Task) -> None:
        """Point the worker's partition at a task offered to it."""
        self._db.put_item(TableName=self._table, Item={
            "pk": {"S": _worker_pk(task.worker)}, "sk": {"S": _offer_sk(task)},
            "job_id": {"S": task.job_id}, "task_id": {"S": task.task_id}})

    def offer_job(self, did: str, job_id: str) -> None:
        """Point the worker's partition at a whole job offered to it (task id "")."""
        self._db.put_item(TableName=self._table, Item={
            "pk": {"S": _worker_pk(did)}, "sk": {"S": f"{OFFER_PREFIX}{job_id}#"},
            "job_id": {"S": job_id}, "task_id": {"S": ""}})

    def offers(self, did: str, limit: int = 25) -> list[tuple[str, str]]:
        """(job id, task id) of the tasks offered to `did`, oldest job first; a task id of
        "" is a whole job."""
        response = self._db.query(
            TableName=self._table, ConsistentRead=True, Limit=limit,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": _worker_pk(did)},
                                       ":prefix": {"S": OFFER_PREFIX}})
        return [(i["job_id"]["S"], i["task_id"]["S"]) for i in response["Items"]]

    def withdraw(self, did: str, job_id: str, task_id: str) -> None:
        self._db.delete_item(TableName=self._table, Key={
            "pk": {"S": _worker_pk(did)}, "sk": {"S": f"{OFFER_PREFIX}{job_id}#{task_id}"}})

    def ask_signature(self, did: str, job_id: str) -> None:
        """Point the worker's partition at an escrow job waiting for its countersignature."""
        self._db.put_item(TableName=self._table, Item={
            "pk": {"S": _worker_pk(did)}, "sk": {"S": SIGN_PREFIX + job_id},
            "job_id": {"S": job_id}})

    def signatures_asked(self, did: str, limit: int = 10) -> list[str]:
        response = self._db.query(
            TableName=self._table, ConsistentRead=True, Limit=limit,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": _worker_pk(did)},
                                       ":prefix": {"S": SIGN_PREFIX}})
        return [i["job_id"]["S"] for i in response["Items"]]

    def signature_given(self, did: str, job_id: str) -> None:
        self._db.delete_item(TableName=self._table, Key={
            "pk": {"S": _worker_pk(did)}, "sk": {"S": SIGN_PREFIX + job_id}})

    def lapsed(self, now, limit: int = 100) -> list[Task]:
        """Offered or leased tasks whose deadline passed (sparse index, no scans)."""
        tasks = []
        for due_state in DUE_STATES:
            response = self._db.query(
                TableName=self._table, IndexName="by_deadline", Limit=limit,
                KeyConditionExpression="due_state = :s AND next_deadline <= :now",
                ExpressionAttributeValues={":s": {"S": due_state}, ":now": {"S": stamp(now)}})
            tasks += [Task.model_validate_json(i["doc"]["S"]) for i in response["Items"]]
        return tasks

    def _put(self, task: Task, condition: str, values: dict) -> None:
        request = {"TableName": self._table, "ConditionExpression": condition,
                   "Item": {"pk": {"S": _pk(task.job_id)}, "sk": {"S": TASK_PREFIX + task.task_id},
                            "version": {"N": str(task.version)}, "state": {"S": task.state.value},
                            "doc": {"S": task.model_dump_json()}}}
        if task.deadline and task.state in (TaskState.ASSIGNED, TaskState.RUNNING):
            request["Item"]["due_state"] = {"S": f"task:{task.state.value}"}
            request["Item"]["next_deadline"] = {"S": stamp(task.deadline)}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self._db.put_item(**request)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise StaleVersion(f"task {task.task_id} of job {task.job_id} moved") from exc
            raise


def _worker_pk(did: str) -> str:
    return f"WORKER#{did}"


def _offer_sk(task: Task) -> str:
    return f"{OFFER_PREFIX}{task.job_id}#{task.task_id}"
