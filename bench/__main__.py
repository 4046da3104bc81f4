"""Run every benchmark, print one table, write bench/results.json (metric name → number)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import (
    cold_start,
    embed,
    escrow_gas,
    local_endpoint,
    probe_jobs,
    route,
    settlement_flow,
    transcode,
    verify,
)

BENCHMARKS = [cold_start, escrow_gas, settlement_flow, local_endpoint, probe_jobs, transcode,
              embed, route, verify]
RESULTS = Path(__file__).resolve().parent / "results.json"


def main() -> None:
    """`python -m bench [name …]` runs the named benchmarks (default: all)."""
    chosen = set(sys.argv[1:])
    results: dict[str, float] = {}
    for bench in BENCHMARKS:
        if not chosen or bench.__name__.rsplit(".", 1)[-1] in chosen:
            results.update(bench.run())
    table = Table("metric", "value", title="make bench")
    for name, value in results.items():
        table.add_row(name, f"{value:,.3f}" if isinstance(value, float) else f"{value:,}")
    Console().print(table)
    merged = {**(json.loads(RESULTS.read_text()) if RESULTS.exists() else {}), **results}
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
