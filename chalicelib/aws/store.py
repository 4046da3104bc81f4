"""DynamoDB adapter for job records: one table, one partition per job.

`pk = JOB#<id>` holds the job (`sk = JOB`), its attempts (`ATT#<n>`) and its timeline
(`EVT#<seq>`), so one Query returns a job with everything that happened to it. Every write
of a job is one TransactWriteItems: the job put conditional on the version the caller read,
plus its events (never overwritten) and attempts. The model travels as a JSON document;
only what indexes and conditions need is lifted into top-level attributes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import ValidationError

from chalicelib.bus import Committed
from chalicelib.errors import JobExists, JobNotFound, StaleVersion
from chalicelib.jobs.states import NON_TERMINAL
from chalicelib.models import Attempt, Event, Job, State, Task
from chalicelib.status.aggregates import Contribution, contributions

logger = Logger(service="proofline")

JOB_SK = "JOB"


def stamp(at: datetime) -> str:
    """Fixed-width UTC timestamps, so string order is time order in sort keys."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class JobView:
    job: Job
    attempts: list[Attempt] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)


class JobStore:
    def __init__(self, client, table: str):
        self._db = client
        self._table = table

    # -- writes ---------------------------------------------------------------------------
    def create(self, job: Job, events: Iterable[Event] = (), attempts: Iterable[Attempt] = (),
               aliases: Iterable[str] = ()) -> None:
        """Write a new job; JobExists (carrying the stored job) if its id is taken.
        `aliases` are other names the job is found by (e.g. its escrow key)."""
        put = self._job_put(job, "attribute_not_exists(pk)", {})
        extra = [{"Put": {"TableName": self._table, "ConditionExpression": "attribute_not_exists(pk)",
                          "Item": {"pk": {"S": f"ALIAS#{a}"}, "sk": {"S": JOB_SK},
                                   "job_id": {"S": job.job_id}}}} for a in aliases]
        events = tuple(events)
        self._transact(job.job_id, put, events, attempts, on_conflict=JobExists, extra=extra,
                       counted=contributions(Committed(None, job, events)))

    def commit(self, expected: Job, job: Job, events: Iterable[Event] = (),
               attempts: Iterable[Attempt] = ()) -> None:
        """Replace `expected` by `job`; StaleVersion (carrying the stored job) if it moved."""
        put = self._job_put(job, "version = :expected",
                            {":expected": {"N": str(expected.version)}})
        events = tuple(events)
        self._transact(job.job_id, put, events, attempts, on_conflict=StaleVersion,
                       counted=contributions(Committed(expected, job, events)))

    # -- reads ----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": _pk(job_id)}, "sk": {"S": JOB_SK}}).get("Item")
        if not item:
            raise JobNotFound(f"no job {job_id!r}")
        return Job.model_validate_json(item["doc"]["S"])

    def view(self, job_id: str) -> JobView:
        """The job, its attempts and its timeline in order, from one Query (paginated)."""
        view: JobView | None = None
        attempts, events, tasks = [], [], []
        for item in self._query(KeyConditionExpression="pk = :pk", ConsistentRead=True,
                                ExpressionAttributeValues={":pk": {"S": _pk(job_id)}}):
            sk, doc = item["sk"]["S"], item.get("doc", {}).get("S")
            if doc is None:
                continue                                   # counters, not documents
            if sk == JOB_SK:
                view = JobView(Job.model_validate_json(doc))
            elif sk.startswith("TASK#"):
                tasks.append(Task.model_validate_json(doc))
            elif sk.startswith("ATT#"):
                attempts.append(Attempt.model_validate_json(doc))
            elif sk.startswith("EVT#"):
                events.append(Event.model_validate_json(doc))
        if view is None:
            raise JobNotFound(f"no job {job_id!r}")
        # Tasks of a split job keep their own entries (EVT#T#…): one timeline, in time order.
        events.sort(key=lambda e: e.at)
        view.attempts, view.events, view.tasks = attempts, events, tasks
        return view

    def list(self, state: State | None = None, limit: int = 50, client: str | None = None,
             before: str | None = None) -> list[Job]:
        """Newest first, created before `before` (a `stamp`) when given: the next page starts
        where the last one ended. A client's jobs: one Query of its index (the state
        filtered); all jobs: one index Query per state asked for."""
        after = {":before": {"S": before}} if before else {}
        window = " AND created_at < :before" if before else ""
        if client is not None:
            names = {"#c": "client", **({"#s": "state"} if state else {})}
            filters = {"FilterExpression": "#s = :s"} if state else {}
            values = {":c": {"S": client}, **({":s": {"S": state.value}} if state else {}),
                      **after}
            found: list[Job] = []
            for item in self._query(IndexName="by_client", ScanIndexForward=False,
                                    KeyConditionExpression="#c = :c" + window,
                                    ExpressionAttributeNames=names,
                                    ExpressionAttributeValues=values, **filters):
                if (job := _readable(item)) is not None:
                    found.append(job)
                if len(found) >= limit:
                    break
            return found
        jobs: list[Job] = []
        for s in [state] if state else list(State):
            page = self._db.query(TableName=self._table, IndexName="by_state", Limit=limit,
                                  ScanIndexForward=False,
                                  KeyConditionExpression="#s = :s" + window,
                                  ExpressionAttributeNames={"#s": "state"},
                                  ExpressionAttributeValues={":s": {"S": s.value}, **after})
            jobs += [job for i in page["Items"] if (job := _readable(i)) is not None]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return jobs[:limit]

    def due(self, now: datetime, limit: int = 100) -> Iterator[Job]:
        """Non-terminal jobs whose next deadline has passed (sparse index, no scans)."""
        for s in NON_TERMINAL:
            for item in self._query(IndexName="by_deadline", Limit=limit,
                                    KeyConditionExpression="due_state = :s AND next_deadline <= :now",
                                    ExpressionAttributeValues={":s": {"S": s.value},
                                                               ":now": {"S": stamp(now)}}):
                yield Job.model_validate_json(item["doc"]["S"])

    def open_escrows(self) -> Iterator[Job]:
        """Every escrow job whose money is not final, oldest first (sparse index, paged)."""
        for item in self._query(IndexName="by_open_escrow",
                                KeyConditionExpression="escrow_open = :o",
                                ExpressionAttributeValues={":o": {"S": "open"}}):
            if (job := _readable(item)) is not None and escrow_open(job):
                yield job

    def count_open_escrows(self) -> int:
        """How many escrow jobs' money is not final (the sparse index's size, counted by
        DynamoDB: one request a megabyte of keys, no items read back)."""
        total, start = 0, None
        while True:
            page = self._db.query(TableName=self._table, IndexName="by_open_escrow",
                                  KeyConditionExpression="escrow_open = :o", Select="COUNT",
                                  ExpressionAttributeValues={":o": {"S": "open"}},
                                  **({"ExclusiveStartKey": start} if start else {}))
            total += page["Count"]
            start = page.get("LastEvaluatedKey")
            if not start:
                return total

    def close_escrow(self, job_id: str) -> None:
        """Take a job out of the open-escrow index (its escrow can no longer be funded)."""
        self._db.update_item(TableName=self._table, UpdateExpression="REMOVE escrow_open",
                             Key={"pk": {"S": _pk(job_id)}, "sk": {"S": JOB_SK}})

    def resolve(self, alias: str) -> str | None:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": f"ALIAS#{alias}"}, "sk": {"S": JOB_SK}}).get("Item")
        return item["job_id"]["S"] if item else None

    def count(self, kind: str, counts: dict[str, int]) -> None:
        """Add to a job class's running totals (one atomic update)."""
        counts = {k: v for k, v in counts.items() if v}
        if not counts:
            return
        names = {f"#c{i}": k for i, k in enumerate(counts)}
        self._db.update_item(
            TableName=self._table, Key={"pk": {"S": f"STATS#{kind}"}, "sk": {"S": JOB_SK}},
            UpdateExpression="ADD " + ", ".join(f"{n} :v{i}" for i, n in enumerate(names)),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":v{i}": {"N": str(v)}
                                       for i, v in enumerate(counts.values())})

    def counts(self, kind: str) -> dict[str, int]:
        item = self._db.get_item(TableName=self._table,
                                 Key={"pk": {"S": f"STATS#{kind}"}, "sk": {"S": JOB_SK}}
                                 ).get("Item", {})
        return {k: int(v["N"]) for k, v in item.items() if "N" in v}

    def cursor(self, name: str) -> int | None:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": f"CURSOR#{name}"}, "sk": {"S": JOB_SK}}).get("Item")
        return int(item["value"]["N"]) if item else None

    def advance_cursor(self, name: str, previous: int | None, value: int) -> bool:
        """Move a cursor forward only from where the caller read it (one follower wins)."""
        condition = "attribute_not_exists(pk)" if previous is None else "#v = :previous"
        values = {":value": {"N": str(value)}}
        if previous is not None:
            values[":previous"] = {"N": str(previous)}
        try:
            self._db.update_item(TableName=self._table, UpdateExpression="SET #v = :value",
                                 Key={"pk": {"S": f"CURSOR#{name}"}, "sk": {"S": JOB_SK}},
                                 ConditionExpression=condition,
                                 ExpressionAttributeNames={"#v": "value"},
                                 ExpressionAttributeValues=values)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise

    # -- internals ------------------------------------------------------------------------
    def _job_put(self, job: Job, condition: str, values: dict) -> dict:
        item = {"pk": {"S": _pk(job.job_id)}, "sk": {"S": JOB_SK},
                "state": {"S": job.state.value}, "version": {"N": str(job.version)},
                "created_at": {"S": stamp(job.created_at)},
                "doc": {"S": job.model_dump_json()}}
        if job.manifest.client_did:
            item["client"] = {"S": job.manifest.client_did}
        if escrow_open(job):
            item["escrow_open"] = {"S": "open"}
        if job.next_deadline and not job.state.terminal:
            item["due_state"] = {"S": job.state.value}
            item["next_deadline"] = {"S": stamp(job.next_deadline)}
        put = {"TableName": self._table, "Item": item, "ConditionExpression": condition,
               "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if values:
            put["ExpressionAttributeValues"] = values
        return {"Put": put}

    def _transact(self, job_id: str, job_put: dict, events: Iterable[Event],
                  attempts: Iterable[Attempt], on_conflict: type, extra: list = (),
                  counted: Iterable[Contribution] = ()) -> None:
        pk = {"S": _pk(job_id)}
        items = [job_put, *extra]
        # An event the status figures count carries its contribution until it is added
        # (`StatusStore.add`): the sweeper adds what a crash left behind (`by_status_due`).
        due = {c.key: status_due(c) for c in counted}
        items += [{"Put": {"TableName": self._table, "ConditionExpression": "attribute_not_exists(sk)",
                           "Item": {"pk": pk, "sk": {"S": f"EVT#{e.seq:08d}"},
                                    "doc": {"S": e.model_dump_json()},
                                    **due.get(f"{job_id}#{e.seq}", {})}}} for e in events]
        latest = {a.number: a for a in attempts}      # folded steps may touch one attempt twice
        items += [{"Put": {"TableName": self._table,
                           "Item": {"pk": pk, "sk": {"S": f"ATT#{a.number:03d}"},
                                    "doc": {"S": a.model_dump_json()}}}} for a in latest.values()]
        try:
            self._db.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or []
            first = reasons[0] if reasons else {}
            if first.get("Code") == "ConditionalCheckFailed":
                stored = first.get("Item", {}).get("doc", {}).get("S")
                current = Job.model_validate_json(stored) if stored else None
                conflict = on_conflict(f"job {job_id} was changed by someone else")
                conflict.current = current
                raise conflict from exc
            raise

    def _query(self, **kwargs) -> Iterator[dict]:
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(TableName=self._table, **kwargs):
            yield from page["Items"]


class GatheredCounts:
    """A JobStore whose class totals (`count`) wait for `flush`, which adds them up in one
    update per class: for a worker that commits several jobs' outcomes in one invocation.
    The totals are best effort by design (statistics never fail a committed transition),
    so a flush that fails is logged, and totals a crash leaves unflushed are lost."""

    def __init__(self, store: JobStore):
        self._store = store
        self._pending: dict[str, dict[str, int]] = {}

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def count(self, kind: str, counts: dict[str, int]) -> None:
        totals = self._pending.setdefault(kind, {})
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for kind, counts in pending.items():
            try:
                self._store.count(kind, counts)
            except Exception:  # noqa: BLE001 - best effort, as count_outcomes' own
                logger.warning("class statistics not updated", extra={"kind": kind})


def escrow_open(job: Job) -> bool:
    """An escrow job whose money is not final: nothing charged or refunded yet."""
    terms = job.escrow
    return (terms is not None and job.state != State.REJECTED
            and terms.charged is None and terms.refunded is None)


def _pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def event_key(job_id: str, seq: int) -> dict:
    return {"pk": {"S": _pk(job_id)}, "sk": {"S": f"EVT#{seq:08d}"}}


STATUS_SHARDS = 8              # the sparse index's partitions: commits spread over them


def status_due(contribution: Contribution) -> dict:
    """The attributes that put an event in `by_status_due` until its figures are added."""
    shard = int(hashlib.sha256(contribution.key.encode()).hexdigest(), 16) % STATUS_SHARDS
    return {"status_due": {"S": f"due#{shard}"},
            "status_at": {"S": stamp(contribution.at)},
            "status": {"S": json.dumps({"key": contribution.key, "kind": contribution.kind,
                                        "at": contribution.at.isoformat(),
                                        "counts": dict(contribution.counts)})}}


def _readable(item: dict) -> Job | None:
    """A listed job, or None (logged) for one stored in a shape this version cannot read: a
    bad item is left out of a listing rather than failing all of it."""
    try:
        return Job.model_validate_json(item["doc"]["S"])
    except (KeyError, ValidationError) as error:
        logger.warning("unreadable job item left out of a listing",
                       extra={"pk": item.get("pk", {}).get("S"), "error": str(error)[:300]})
        return None
