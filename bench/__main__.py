"""Run every benchmark, print one table, write bench/results.json (metric name → number)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import probe_jobs

BENCHMARKS = [probe_jobs]
RESULTS = Path(__file__).resolve().parent / "results.json"


def main() -> None:
    results: dict[str, float] = {}
    for bench in BENCHMARKS:
        results.update(bench.run())
    table = Table("metric", "value", title="make bench")
    for name, value in results.items():
        table.add_row(name, f"{value:,.3f}" if isinstance(value, float) else f"{value:,}")
    Console().print(table)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
