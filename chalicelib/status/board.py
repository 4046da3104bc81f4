"""The status page's service: count each committed change into its class's time buckets,
and read the page's figures back from them (a fixed number of reads, whatever the number of
jobs), with the queues' depths beside them."""
from __future__ import annotations

from datetime import datetime, timedelta

from aws_lambda_powertools import Logger

from chalicelib.bus import Committed
from chalicelib.context import Ports
from chalicelib.settlement import follower
from chalicelib.status import aggregates

logger = Logger(child=True)

# The series plotted per minute and per hour.
SERIES = ("settled", "failed", "rejected", "validation_failed")


def record_status(ports: Ports, committed: Committed) -> None:
    """After commit: add what the change contributes, once (its marker makes a second run
    add nothing). Best effort: a figure never fails a committed transition."""
    if ports.status is None:
        return
    for contribution in aggregates.contributions(committed):
        try:
            ports.status.add(contribution)
        except Exception:  # noqa: BLE001 - logged; the transition it counts is committed
            logger.warning("status figures not updated",
                           extra={"job_id": committed.after.job_id, "key": contribution.key})


# A contribution its own handler has not added this long after its commit was lost to a
# crash (or an error): the sweeper adds it.
REPAIR_AFTER = timedelta(minutes=1)


def repair_status(ports: Ports, now: datetime) -> list[str]:
    """The sweeper's part: add the contributions committed a while ago and still due (each
    once: a marker makes an add that did happen a no-op). Returns their keys."""
    if ports.status is None:
        return []
    repaired = []
    for contribution in ports.status.due(now - REPAIR_AFTER):
        if ports.status.add(contribution):
            repaired.append(contribution.key)
    return repaired


def status_document(ports: Ports, now: datetime) -> dict:
    """Per job class, the last hour and day (the hour minute by minute and the day hour by
    hour, from the same buckets), and the work queues' depths and oldest messages' ages."""
    first_minute, last_minute, first_hour, last_hour = aggregates.window_keys(now)
    classes = {}
    # "unknown": drops refused before they named a class.
    for kind in [*sorted(ports.catalog.job_classes), "unknown"]:
        minutes = ports.status.buckets(kind, first_minute, last_minute)
        hours = ports.status.buckets(kind, first_hour, last_hour)
        classes[kind] = {
            "last_hour": aggregates.figures(aggregates.totals(minutes.values())),
            "last_day": aggregates.figures(aggregates.totals(hours.values())),
            "per_minute": {name: aggregates.series(minutes, now, name) for name in SERIES},
            "per_hour": {name: aggregates.hourly_series(hours, now, name) for name in SERIES}}
    candidates = ports.workers.candidates(now) if ports.workers is not None else []
    workers = aggregates.workers_online(
        candidates, sorted(ports.catalog.job_classes), region=ports.settings.region,
        now=now.timestamp(), heartbeat_ttl_s=ports.settings.heartbeat_ttl_s)
    return {"generated_at": now.isoformat(), "classes": classes,
            "workers": workers, "queues": _queues(ports, now),
            "settlement": _settlement(ports, classes)}


def _queues(ports: Ports, now: datetime) -> dict[str, dict]:
    """Each work queue's depths, and its oldest message's age where CloudWatch has one. The
    age is best effort: CloudWatch unreachable or refusing is a warning and no age, never a
    page that fails."""
    ages: dict[str, float | None] = {}
    if ports.queue_ages is not None:
        try:
            ages = ports.queue_ages.oldest(now)
        except Exception:  # noqa: BLE001 - the page shows what it can
            logger.warning("queue ages unreadable for the status page", exc_info=True)
    return {queue: {**depths, "oldest_age_s": ages.get(queue)}
            for queue, depths in ports.queues.depths().items()}


def _settlement(ports: Ports, classes: dict) -> dict:
    """The chain's side, aggregates only: releases and refunds over the last day; how many
    escrows are open; how far the follower is behind the confirmed head."""
    day = [c["last_day"] for c in classes.values()]
    found = {"enabled": ports.chain is not None,
             "releases_last_day": sum(d["releases"] for d in day),
             "refunds_last_day": sum(d["refunds"] for d in day),
             "open_escrows": ports.store.count_open_escrows(),
             "follower_lag_blocks": None}
    if ports.chain is not None:
        try:
            found["follower_lag_blocks"] = follower.lag_blocks(ports)
        except Exception:  # noqa: BLE001 - the page shows what it can; the chain may be down
            logger.warning("chain unreachable for the status page")
    return found
