"""Verification rules: pure functions from (what a worker claimed, what we measured) to a
verdict with every measured value, so the timeline shows why an output was paid or not."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from chalicelib.media.probe import ProbeReport, sha256_bytes
from chalicelib.models import AttemptResult


@dataclass(frozen=True)
class Evidence:
    """What the verifier fetched itself; nothing here comes from the worker."""
    output: bytes
    input_size_bytes: int | None = None


@dataclass(frozen=True)
class Verdict:
    policy: str
    checks: dict[str, bool]
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    @property
    def reason(self) -> str | None:
        failed = [name for name, ok in self.checks.items() if not ok]
        return f"check_failed:{failed[0]}" if failed else None

    def as_event(self) -> dict:
        return {"policy": self.policy, "passed": self.passed, "checks": self.checks,
                "measured": self.measured, "reason": self.reason}


def probe_report(result: AttemptResult, evidence: Evidence) -> Verdict:
    """The report is what was uploaded, is a valid ProbeReport, and describes our input."""
    data = evidence.output
    sha = sha256_bytes(data)
    checks = {"sha256_matches": sha == result.output.sha256,
              "size_matches": len(data) == result.output.size_bytes}
    measured: dict[str, Any] = {"sha256": sha, "size_bytes": len(data)}
    try:
        report = ProbeReport.model_validate_json(data)
    except ValidationError as exc:
        checks["schema_valid"] = False
        measured["schema_errors"] = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                     for e in exc.errors()[:5]]
        return Verdict("probe_report", checks, measured)
    checks["schema_valid"] = True
    measured.update(format_name=report.format_name, duration_s=report.duration_s,
                    streams=len(report.streams), reported_input_bytes=report.size_bytes)
    if evidence.input_size_bytes is not None:
        checks["describes_input"] = report.size_bytes == evidence.input_size_bytes
        measured["input_size_bytes"] = evidence.input_size_bytes
    return Verdict("probe_report", checks, measured)


POLICIES: dict[str, Callable[[AttemptResult, Evidence], Verdict]] = {
    "probe_report": probe_report,
}

# Policies judged where their evidence lives, not by the verify queue's handler: segment
# tasks and packages in the media worker, re-execution on the model's trusted pool.
JUDGED_ELSEWHERE = frozenset({"segments_then_package", "embedding_reexecution",
                              "generation_reexecution"})
KNOWN_POLICIES = frozenset(POLICIES) | JUDGED_ELSEWHERE
