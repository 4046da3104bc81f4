"""The scorecard's end-to-end trials: every cheat that travels the lease path (the video
cheats, and the inference cheats), run by an adversary (`bench.adversary`) that passes its
challenge honestly and then cheats on client jobs it wins over HTTP, on a local stack of its
own. `PROOFLINE_BENCH_E2E_TRIALS` (default 3) jobs per cheat; `PROOFLINE_BENCH_E2E_CHEATS`
(comma-separated) runs only those.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import adversary, operator_api
from proofline.devstack import DevStack

ROOT = Path(__file__).resolve().parent.parent


def run() -> dict[str, list[int]]:
    """cheat → [caught, jobs, delivered], measured in a process of its own (a second
    DevStack cannot start in a process that already ran one)."""
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        results = Path(tmp) / "results.json"
        subprocess.run([sys.executable, "-m", "bench.verify_e2e", str(results)], cwd=ROOT,
                       check=True)
        return json.loads(results.read_text())


def measure() -> dict[str, list[int]]:
    trials = int(os.environ.get("PROOFLINE_BENCH_E2E_TRIALS", "3"))
    # Leases and offers lapse within half a minute: a stuck adversary costs little, and a
    # busy two-core machine still takes its offers in time.
    os.environ.setdefault("PROOFLINE_WORKER_LEASE_SECONDS", "30")
    os.environ.setdefault("PROOFLINE_OFFER_SECONDS", "30")
    os.environ.setdefault("PROOFLINE_RECHALLENGE_SECONDS", "5")
    with tempfile.TemporaryDirectory(prefix="proofline-bench-") as tmp:
        stack = DevStack(Path(tmp) / "state", visibility_cap=2, schedule_every_s=1,
                         pool_workers=2)
        try:
            stack.start()
            chosen = os.environ.get("PROOFLINE_BENCH_E2E_CHEATS")
            outcomes = adversary.campaign(operator_api(stack), stack.info.chain_id,
                                          chosen.split(",") if chosen
                                          else adversary.LEASE_PATH_CHEATS, trials=trials,
                                          workdir=Path(tmp))
        finally:
            stack.stop()
    tally: dict[str, list[int]] = {}
    for outcome in outcomes:
        row = tally.setdefault(outcome.cheat, [0, 0, 0])
        row[0] += outcome.held
        row[1] += 1
        row[2] += outcome.delivered
    return tally


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(measure()))
