"""Sends and class totals gathered over one invocation: each message sent once, in as few
requests as SQS's limits allow; the totals added up in one update per class."""
from __future__ import annotations

import json

import pytest

from chalicelib.aws.queues import BATCH_BYTES, GatheredSends, Queues
from chalicelib.aws.store import GatheredCounts


class FakeSqs:
    def __init__(self, fail: int = 0):
        self.requests: list[tuple[str, list[str]]] = []
        self.fail = fail

    def get_queue_url(self, QueueName):
        return {"QueueUrl": f"https://sqs.local/{QueueName}"}

    def send_message(self, QueueUrl, MessageBody):
        self.requests.append(("SendMessage", [MessageBody]))

    def send_message_batch(self, QueueUrl, Entries):
        assert len(Entries) <= 10
        assert sum(len(e["MessageBody"].encode()) for e in Entries) <= BATCH_BYTES
        self.requests.append(("SendMessageBatch", [e["MessageBody"] for e in Entries]))
        failed = [{"Id": e["Id"], "Code": "InternalError"} for e in Entries[:self.fail]]
        return {"Successful": [], **({"Failed": failed} if failed else {})}


def test_gathered_sends_go_out_once_each_in_batches_within_the_limits():
    sqs = FakeSqs()
    gathered = GatheredSends(Queues(sqs, {"inference": "q-inference", "settlement": "q-s"}))
    small = [{"n": i} for i in range(23)]
    large = [{"n": 100 + i, "pad": "x" * 60_000} for i in range(6)]    # four fill a batch
    for message in small + large:
        gathered.send("inference", message)
    gathered.send("settlement", {"n": -1})
    assert sqs.requests == []                                   # nothing before the flush
    gathered.flush()
    bodies = [json.loads(b) for _, chunk in sqs.requests for b in chunk]
    assert sorted(m["n"] for m in bodies) == sorted([-1] + [m["n"] for m in small + large])
    # 29 to the inference queue: ten, ten, then three small and four large (the limit in
    # bytes), then the last two large; the one to settlement alone.
    assert [len(chunk) for _, chunk in sqs.requests] == [10, 10, 7, 2, 1]
    assert [kind for kind, _ in sqs.requests].count("SendMessageBatch") == 4
    assert sqs.requests[-1] == ("SendMessage", [json.dumps({"n": -1})])   # a lone message
    gathered.flush()
    assert len([b for _, chunk in sqs.requests for b in chunk]) == len(bodies)  # sent once


def test_a_batch_entry_sqs_refuses_raises():
    gathered = GatheredSends(Queues(FakeSqs(fail=1), {"inference": "q"}))
    gathered.send("inference", {"n": 1})
    gathered.send("inference", {"n": 2})
    with pytest.raises(RuntimeError, match="not sent"):
        gathered.flush()


class FakeStore:
    def __init__(self, broken: bool = False):
        self.updates: list[tuple[str, dict]] = []
        self.broken = broken

    def count(self, kind, counts):
        if self.broken:
            raise RuntimeError("throttled")
        self.updates.append((kind, dict(counts)))

    def get(self, job_id):
        return f"job {job_id}"


def test_gathered_counts_are_one_update_per_class_and_other_calls_pass_through():
    store = FakeStore()
    gathered = GatheredCounts(store)
    gathered.count("embed_batch", {"validations": 1, "settled": 1})
    gathered.count("embed_batch", {"validations": 1, "validation_failures": 1, "retries": 1})
    gathered.count("generate_small", {"validations": 1})
    assert gathered.get("j1") == "job j1" and store.updates == []
    gathered.flush()
    assert sorted(store.updates) == [
        ("embed_batch", {"validations": 2, "settled": 1, "validation_failures": 1,
                         "retries": 1}),
        ("generate_small", {"validations": 1})]
    gathered.flush()
    assert len(store.updates) == 2


def test_totals_that_cannot_be_written_never_fail_the_invocation():
    gathered = GatheredCounts(FakeStore(broken=True))
    gathered.count("embed_batch", {"validations": 1})
    gathered.flush()                                            # logged, not raised
