"""DynamoDB adapter for the status page's time buckets (`chalicelib/status/aggregates.py`).

Each job class has a partition of bucket items, one per minute (`M#…`) and per hour
(`H#…`), holding counters. A contribution is added with one transaction: a marker of its key
in the idempotency table (expiring after two days, long past any retry) and the additions to
its minute and hour, so it counts exactly once however often its handler runs. The page
reads two queries per class, whatever the number of jobs.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from botocore.exceptions import ClientError

from chalicelib.aws.store import STATUS_SHARDS, event_key, stamp
from chalicelib.status.aggregates import Contribution, hour_key, minute_key

MARK_TTL = timedelta(days=2)
MINUTE_TTL = timedelta(days=2)        # the page shows an hour of minutes and a day of hours
HOUR_TTL = timedelta(days=30)


class StatusStore:
    def __init__(self, client, jobs_table: str, marks_table: str):
        self._db = client
        self._jobs = jobs_table
        self._marks = marks_table

    def add(self, contribution: Contribution) -> bool:
        """Add a contribution once; False when its marker says it was added before."""
        counts = {name: value for name, value in contribution.counts.items() if value}
        if not counts:
            return False
        at = contribution.at
        names = {f"#c{i}": name for i, name in enumerate(counts)}
        values = {f":v{i}": {"N": str(value)} for i, value in enumerate(counts.values())}
        adds = ", ".join(f"#c{i} :v{i}" for i in range(len(counts)))

        def bucket(sk: str, expires) -> dict:
            return {"Update": {
                "TableName": self._jobs,
                "Key": {"pk": {"S": f"STATUS#{contribution.kind}"}, "sk": {"S": sk}},
                "UpdateExpression": f"ADD {adds} SET #expires = if_not_exists(#expires, :exp)",
                "ExpressionAttributeNames": {**names, "#expires": "expires_at"},
                "ExpressionAttributeValues": {**values,
                                              ":exp": {"N": str(int(expires.timestamp()))}}}}
        try:
            self._db.transact_write_items(TransactItems=[
                {"Put": {"TableName": self._marks, "ConditionExpression": "attribute_not_exists(id)",
                         "Item": {"id": {"S": f"status#{contribution.key}"},
                                  "expiration": {"N": str(int((at + MARK_TTL).timestamp()))}}}},
                bucket(minute_key(at), at + MINUTE_TTL),
                bucket(hour_key(at), at + HOUR_TTL),
                *self._settle(contribution)])
        except ClientError as exc:
            reasons = exc.response.get("CancellationReasons") or []
            if not (reasons and reasons[0].get("Code") == "ConditionalCheckFailed"):
                raise
            for update in self._settle(contribution):        # counted already: not due
                self._db.update_item(**update["Update"])
            return False
        return True

    def _settle(self, contribution: Contribution) -> list[dict]:
        """Take the event out of the sweeper's index (where it was committed with its job)."""
        job_id, _, seq = contribution.key.rpartition("#")
        if not job_id or not seq.isdigit():
            return []
        return [{"Update": {"TableName": self._jobs, "Key": event_key(job_id, int(seq)),
                            "UpdateExpression": "REMOVE status_due, status_at, #status",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeNames": {"#status": "status"}}}]

    def due(self, before: datetime, limit: int = 100) -> list[Contribution]:
        """Contributions committed before `before` and not added yet (a crash between a
        commit and its handler), oldest first in each shard."""
        found = []
        for shard in range(STATUS_SHARDS):
            page = self._db.query(
                TableName=self._jobs, IndexName="by_status_due", Limit=limit,
                KeyConditionExpression="status_due = :s AND status_at < :t",
                ExpressionAttributeValues={":s": {"S": f"due#{shard}"},
                                           ":t": {"S": stamp(before)}})
            for item in page["Items"]:
                stored = json.loads(item["status"]["S"])
                found.append(Contribution(key=stored["key"], kind=stored["kind"],
                                          at=datetime.fromisoformat(stored["at"]),
                                          counts=stored["counts"]))
        return found

    def buckets(self, kind: str, first: str, last: str) -> dict[str, dict[str, int]]:
        """The class's buckets with keys from `first` to `last` (one kind: M# or H#)."""
        found, start = {}, None
        while True:
            page = self._db.query(
                TableName=self._jobs, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND sk BETWEEN :a AND :b",
                ExpressionAttributeValues={":pk": {"S": f"STATUS#{kind}"},
                                           ":a": {"S": first}, ":b": {"S": last}},
                **({"ExclusiveStartKey": start} if start else {}))
            for item in page["Items"]:
                found[item["sk"]["S"]] = {name: int(value["N"]) for name, value in item.items()
                                          if "N" in value and name != "expires_at"}
            start = page.get("LastEvaluatedKey")
            if not start:
                return found
