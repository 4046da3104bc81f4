"""What a job's verification actually covered, and what that guarantees, from its timeline.

Each verdict records what it audited (a segment's content or not, which rows were
re-executed). From those, a job states the probability that a worker who faked a given
fraction of the work would have been caught: the chance that at least one faked item was
among the audited ones, the audited ones drawn where the worker could not predict them.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from chalicelib.verification.audit import caught_probability

CHEAT_FRACTIONS = (0.01, 0.05, 0.10)
STATED_FRACTION = 0.05


def stated(unit: str, population: int, audited: int) -> dict[str, Any]:
    caught = {f"{round(f * 100)}%": round(caught_probability(population, audited, f), 6)
              for f in CHEAT_FRACTIONS}
    p = caught[f"{round(STATED_FRACTION * 100)}%"]
    return {"unit": unit, "population": population, "audited": audited,
            "caught_if_faked": caught,
            "statement": f"a worker faking ≥ {round(STATED_FRACTION * 100)}% of the {unit} "
                         f"is caught with p ≥ {_floor(p)}"}


def summarize(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """`events` as (type, data) mappings in timeline order; None when nothing was audited
    (a job that never reached verification, or a probe report)."""
    segments: dict[str, bool] = {}
    rows = None
    for event in events:
        data = event.get("data") or {}
        measured = data.get("measured") or {}
        if event.get("type") == "segment.verified" and data.get("policy") == "segment_video":
            segments[str(data.get("task") or len(segments))] = bool(
                measured.get("content_audited"))
        elif event.get("type") == "validation.passed" and "rows_reexecuted" in measured:
            rows = (int(measured.get("rows") or measured["rows_reexecuted"]),
                    int(measured["rows_reexecuted"]))
        elif (event.get("type") == "validation.passed"
              and data.get("policy") == "generation_reexecution"):
            rows = (1, 1)
    if segments:
        return stated("video segments", len(segments), sum(segments.values()))
    if rows:
        unit = "generations" if rows == (1, 1) else "rows"
        return stated(unit, *rows)
    return None


def _floor(p: float) -> str:
    """Round down to three decimals, so the statement never claims more than it has."""
    return f"{int(p * 1000) / 1000:.3f}"
