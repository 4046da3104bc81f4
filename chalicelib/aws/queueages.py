"""CloudWatch adapter: how long each work queue's oldest message has waited.

SQS has no queue attribute for this: it publishes it to CloudWatch, once a minute, as
`AWS/SQS ApproximateAgeOfOldestMessage` by `QueueName`. One `GetMetricData` request reads
every queue's (a point per minute over the last five minutes, each the minute's Maximum),
so the page pays one request however many queues there are. A queue without a point in the
window has no age: a local stack (moto publishes no SQS metrics), or a queue SQS has not
reported on lately.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable

NAMESPACE = "AWS/SQS"
METRIC = "ApproximateAgeOfOldestMessage"
WINDOW = timedelta(minutes=5)
PERIOD_S = 60


class QueueAges:
    def __init__(self, client: Callable[[], Any], names: dict[str, str]):
        """`client` makes the CloudWatch client on first use: only the status page reads
        ages, so no other function's cold start pays for building one."""
        self._client = client
        self._names = names

    def oldest(self, now: datetime) -> dict[str, float | None]:
        """Each work queue → the largest age of its oldest message, in seconds, over the
        five minutes before `now`; None where CloudWatch has no point."""
        ids = {f"q{i}": queue for i, queue in enumerate(self._names)}   # Ids: [a-z][a-zA-Z0-9_]*
        response = self._client().get_metric_data(
            MetricDataQueries=[{"Id": query_id, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": METRIC,
                           "Dimensions": [{"Name": "QueueName", "Value": self._names[queue]}]},
                "Period": PERIOD_S, "Stat": "Maximum"}}
                for query_id, queue in ids.items()],
            StartTime=now - WINDOW, EndTime=now)
        found: dict[str, float | None] = dict.fromkeys(self._names)
        for result in response["MetricDataResults"]:
            if result.get("Values"):
                found[ids[result["Id"]]] = max(result["Values"])
        return found
