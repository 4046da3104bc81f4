"""DynamoDB adapter for the tasks of a split job, kept in the job's partition.

`sk = TASK#<id>` holds a task, `EVT#T#<id>#<version>` its timeline entries (the job's
timeline Query returns them along with the job's own), and `PROGRESS` the count of passed
tasks. Tasks change with single conditional writes on their own version, never through the
job record: many workers finish segments at once, and none of them contends with the others.
"""
from __future__ import annotations

from typing import Iterable

from botocore.exceptions import ClientError

from .errors import StaleVersion
from .models import Event, Task
from .store import _pk

TASK_PREFIX = "TASK#"
PROGRESS_SK = "PROGRESS"


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

    def _put(self, task: Task, condition: str, values: dict) -> None:
        request = {"TableName": self._table, "ConditionExpression": condition,
                   "Item": {"pk": {"S": _pk(task.job_id)}, "sk": {"S": TASK_PREFIX + task.task_id},
                            "version": {"N": str(task.version)}, "state": {"S": task.state.value},
                            "doc": {"S": task.model_dump_json()}}}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self._db.put_item(**request)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise StaleVersion(f"task {task.task_id} of job {task.job_id} moved") from exc
            raise
