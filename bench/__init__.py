"""Benchmarks: `make bench` (python -m bench) prints a table and writes bench/results.json."""


def event_at(event: dict):
    """An event's `at` as an aware datetime (the API writes UTC)."""
    from datetime import datetime, timezone
    at = datetime.fromisoformat(event["at"])
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def settled_at(events: list[dict]):
    return min(event_at(e) for e in events if e["state"] == "settled")
