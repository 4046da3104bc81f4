"""A job's timeline read for people: compute and money on one line of time, each task's
attempts and verdicts, and each routing decision with why. Events in, plain rows out (the
page escapes them where it writes them). Pure."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.settlement.money import from_base_units

_TX = re.compile(r"^0x[0-9a-fA-F]{64}$")
# Events whose amounts are in the escrow token's base units, and which amounts they carry.
_MONEY_FIELDS = ("amount", "price", "charged", "fee", "paid", "refunded")


@dataclass(frozen=True)
class Money:
    """The escrow's token, to turn base units into decimals; None: a job without escrow."""
    symbol: str
    decimals: int

    def show(self, units: Any) -> str:
        try:
            return f"{from_base_units(int(units), self.decimals)} {self.symbol}"
        except (TypeError, ValueError):
            return str(units)


@dataclass(frozen=True)
class Row:
    at_s: float                       # seconds since the job was created
    at: str
    state: str
    type: str
    summary: str
    money: str = ""
    tx: str | None = None             # a transaction hash, checked to be one


@dataclass
class TaskRow:
    task: str
    rendition: str
    index: int | None
    attempts: int = 0
    workers: list[str] = field(default_factory=list)
    verdict: str = "pending"
    reason: str | None = None
    measured: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)   # releases, losses: worker-written text
    ffmpeg: str | None = None         # the build its worker says it ran (a claim)


def job_rows(events: list[dict], created_at: datetime, money: Money | None) -> list[Row]:
    """The job's own events (a task's are in `task_rows`), each in one line."""
    rows = []
    for event in events:
        if event.get("task"):
            continue
        data = event.get("data") or {}
        at = _parse(event["at"])
        tx = data.get("tx_hash")
        rows.append(Row(at_s=round((at - created_at).total_seconds(), 3), at=event["at"],
                        state=event["state"], type=event["type"],
                        summary=summary(event["type"], data, money),
                        money=_money(event["type"], data, money),
                        tx=tx if isinstance(tx, str) and _TX.match(tx) else None))
    return rows


def summary(kind: str, data: dict, money: Money | None) -> str:
    """One sentence for an event, from the fields people ask about; others in key=value."""
    said = {
        "job.created": lambda: f"submitted ({data.get('source')}, {data.get('kind')})",
        "job.assigned": lambda: f"attempt {data.get('attempt')} to {data.get('worker')}: "
                                f"{data.get('reason') or ''}",
        "segments.planned": lambda: (
            f"{data.get('segments')} segments × {len(data.get('renditions') or [])} "
            f"renditions{' + audio' if data.get('audio') else ''} = {data.get('tasks')} tasks; "
            f"cut by {(data.get('split') or {}).get('method', 'the stack')}"),
        "validation.passed": lambda: f"{data.get('policy')}: every check passed",
        "validation.failed": lambda: f"{data.get('policy')}: failed — {data.get('reason')}",
        "output.promoted": lambda: f"{data.get('name')} ({data.get('sha256')})",
        "escrow.funded": lambda: f"funded by {data.get('client')} (block {data.get('block')})",
        "escrow.assigned": lambda: f"payee {data.get('worker')} (block {data.get('block')})",
        "job.failed": lambda: f"failed: {data.get('reason')}",
        "job.rejected": lambda: f"rejected: {data.get('reason')}",
        "job.cancelled": lambda: f"cancelled by {data.get('by')}",
    }.get(kind)
    if said is not None:
        return said()
    shown = {k: v for k, v in data.items()
             if k not in _MONEY_FIELDS and k != "tx_hash" and isinstance(v, (str, int, float))}
    return ", ".join(f"{k}={v}" for k, v in list(shown.items())[:6])


def _money(kind: str, data: dict, money: Money | None) -> str:
    if money is None:
        return ""
    parts = [f"{name} {money.show(data[name])}" for name in _MONEY_FIELDS
             if data.get(name) not in (None, "")
             and not (kind == "payment.authorized" and name != "amount")]
    return "; ".join(parts)


def task_rows(events: list[dict]) -> list[TaskRow]:
    """Each segment task: its attempts, who ran them, and the last verdict with what it
    measured (and whether its content was audited)."""
    tasks: dict[str, TaskRow] = {}
    for event in events:
        name = event.get("task")
        if not name:
            continue
        data = event.get("data") or {}
        row = tasks.setdefault(name, TaskRow(task=name, rendition=data.get("rendition")
                                             or "audio", index=data.get("index")))
        if event["type"] == "segment.started":
            row.attempts = max(row.attempts, int(data.get("attempt") or 1))
            if data.get("worker") and data["worker"] not in row.workers:
                row.workers.append(data["worker"])
        elif event["type"] == "segment.submitted":
            row.ffmpeg = data.get("ffmpeg") if isinstance(data.get("ffmpeg"), str) else None
        elif event["type"] in ("segment.verified", "segment.rejected"):
            row.verdict = "passed" if data.get("passed") else "rejected"
            row.reason = data.get("reason")
            row.measured = {k: v for k, v in (data.get("measured") or {}).items()
                            if isinstance(v, (str, int, float, bool))}
        elif event["type"] == "segment.failed":
            row.verdict, row.reason = "failed", data.get("reason")
        elif event["type"] in ("segment.released", "segment.lost", "segment.lease_expired",
                               "segment.offer_lapsed"):
            said = data.get("message") or data.get("reason") or ""
            row.notes.append(f"{event['type'].split('.', 1)[1]} by "
                             f"{data.get('worker') or 'its worker'}: {said}")
    return sorted(tasks.values(), key=lambda t: (t.rendition, t.index or 0, t.task))


def decisions(events: list[dict]) -> list[dict]:
    """Every routing decision on the timeline: the chosen worker, the sentence why, each
    ranked candidate with its factors, and each excluded one with its reason."""
    found = []
    for event in events:
        data = event.get("data") or {}
        ranking = data.get("ranking")
        if not isinstance(ranking, dict):
            continue
        found.append({"type": event["type"], "task": event.get("task"), "at": event["at"],
                      "chosen": ranking.get("chosen") or [data.get("worker")],
                      "reason": ranking.get("reason") or data.get("reason") or "",
                      "fallback": bool(ranking.get("fallback")),
                      "ranked": [r for r in ranking.get("ranked") or [] if isinstance(r, dict)],
                      "excluded": _excluded(ranking.get("excluded"))})
    return found


def _excluded(excluded: Any) -> list[tuple[str, int, list[str]]]:
    """`{reason: {count, first: [ids]}}` (router.Ranking.as_event) as rows."""
    if not isinstance(excluded, dict):
        return []
    return [(str(why), int(seen.get("count") or 0), [str(w) for w in seen.get("first") or []])
            for why, seen in excluded.items() if isinstance(seen, dict)]


def verdicts(events: list[dict]) -> list[dict]:
    """The job's own verification verdicts: each check, what was measured, what audited."""
    return [{"at": e["at"], "passed": e["type"] == "validation.passed",
             "policy": (e.get("data") or {}).get("policy"),
             "reason": (e.get("data") or {}).get("reason"),
             "checks": (e.get("data") or {}).get("checks") or {},
             "measured": {k: v for k, v in ((e.get("data") or {}).get("measured") or {}).items()
                          if isinstance(v, (str, int, float, bool))}}
            for e in events if e["type"] in ("validation.passed", "validation.failed")
            and not e.get("task")]


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))
