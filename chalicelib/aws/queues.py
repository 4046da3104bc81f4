"""SQS adapter: the control plane's outbound messages (dispatch to pools, verification)."""
from __future__ import annotations

import json
from functools import lru_cache


class Queues:
    def __init__(self, client, names: dict[str, str]):
        self._sqs = client
        self._names = names

    def send(self, queue: str, message: dict) -> None:
        self._sqs.send_message(QueueUrl=self._url(queue), MessageBody=json.dumps(message))

    @lru_cache(maxsize=None)
    def _url(self, queue: str) -> str:
        return self._sqs.get_queue_url(QueueName=self._names[queue])["QueueUrl"]
