"""SQS adapter: the control plane's outbound messages (dispatch to pools, verification)."""
from __future__ import annotations

import json
from functools import lru_cache

# SendMessageBatch takes at most ten messages and 256 KiB (their bodies together) a call.
BATCH_ENTRIES = 10
BATCH_BYTES = 256 * 1024


class Queues:
    def __init__(self, client, names: dict[str, str]):
        self._sqs = client
        self._names = names

    def send(self, queue: str, message: dict) -> None:
        self._sqs.send_message(QueueUrl=self._url(queue), MessageBody=json.dumps(message))

    def send_many(self, queue: str, messages: list[dict]) -> None:
        """Each message once, in as few requests as SQS's batch limits allow; raises if
        any was not accepted (a batch's entries succeed or fail one by one)."""
        for chunk in _chunks([json.dumps(m) for m in messages]):
            if len(chunk) == 1:
                self._sqs.send_message(QueueUrl=self._url(queue), MessageBody=chunk[0])
                continue
            response = self._sqs.send_message_batch(QueueUrl=self._url(queue), Entries=[
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)])
            if response.get("Failed"):
                raise RuntimeError(f"{len(response['Failed'])} of {len(chunk)} messages to "
                                   f"{queue} not sent: {response['Failed'][:3]}")

    def depths(self) -> dict[str, dict[str, int]]:
        """Each work queue's messages waiting and in flight, and its dead-letter queue's
        waiting (named `<queue>-dlq`): two reads per queue."""
        found = {}
        for queue, name in self._names.items():
            attributes = self._sqs.get_queue_attributes(QueueUrl=self._url(queue), AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])[
                "Attributes"]
            dead = self._sqs.get_queue_attributes(
                QueueUrl=self._sqs.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"],
                AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
            found[queue] = {"waiting": int(attributes["ApproximateNumberOfMessages"]),
                            "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
                            "dead_letters": int(dead["ApproximateNumberOfMessages"])}
        return found

    @lru_cache(maxsize=None)
    def _url(self, queue: str) -> str:
        return self._sqs.get_queue_url(QueueName=self._names[queue])["QueueUrl"]


def _chunks(bodies: list[str]) -> list[list[str]]:
    chunks, current, size = [], [], 0
    for body in bodies:
        length = len(body.encode("utf-8"))
        if current and (len(current) == BATCH_ENTRIES or size + length > BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(body)
        size += length
    return chunks + ([current] if current else [])


class GatheredSends:
    """Queues whose sends wait for `flush`, which sends each queue's in batches: for a
    worker that commits several jobs back to back and then sends their messages together.
    A message not flushed (the process died after the commit) is the sweeper's to redo,
    as any after-commit work is."""

    def __init__(self, queues):
        self._queues = queues
        self._pending: dict[str, list[dict]] = {}

    def send(self, queue: str, message: dict) -> None:
        self._pending.setdefault(queue, []).append(message)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for queue, messages in pending.items():
            send_many = getattr(self._queues, "send_many", None)
            if send_many is not None:
                send_many(queue, messages)
            else:                           # a stand-in that only sends one at a time
                for message in messages:
                    self._queues.send(queue, message)
