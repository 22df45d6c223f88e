"""Check that cells run again (other code, same settings) computed the same numbers as a table's.

    python benchmarks/same_numbers.py benchmarks/results/table_cpu/main multirun/verify_baselines

For every cell under the second directory (a run directory with results.json), the cell of the same
name under the first is compared round by round on everything a run computes: accuracies (mean,
spread, per group, per architecture, per client), bytes, and who took part. Times and memory are
left out (they depend on the machine's load). Prints one line per cell and exits 1 if any differs:
the check to make before keeping a table's cells across a code change (``kept`` in the table's
CODE file, benchmarks/table.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Measured, not computed: they vary with the machine's load, not with the code's numbers.
NOT_COMPUTED = ("seconds", "rss_mb", "gpu_mb", "client_fit", "client_eval_seconds_total")


def computed(record: Any) -> Any:
    """``record`` without the measured fields (``NOT_COMPUTED``), recursively."""
    if isinstance(record, dict):
        return {k: computed(v) for k, v in record.items() if not any(m in k for m in NOT_COMPUTED)}
    if isinstance(record, list):
        return [computed(v) for v in record]
    return record


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where ``a`` and ``b`` first differ (a path such as ``rounds[3].global_accuracy``), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}.{key} (only in one)"
            found = first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


SAME = "same numbers"


def compare_cell(table_cell: Path, rerun_cell: Path) -> str:
    """``SAME``, or what keeps the cell run again from counting as the same: where it first differs
    from the table's, or that it has not finished."""
    table, rerun = (json.loads((c / "results.json").read_text()) for c in (table_cell, rerun_cell))
    if not rerun.get("final"):
        return "unfinished (not compared)"
    for part in ("rounds", "final"):  # rounds first: the first round that differs says most
        found = first_difference(computed(table.get(part)), computed(rerun.get(part)), part)
        if found:
            return f"differs at {found}"
    return SAME


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="the table's cells (e.g. benchmarks/results/table_cpu/main)")
    parser.add_argument("rerun", type=Path, help="the same cells run again with other code")
    args = parser.parse_args()
    cells = sorted(p.parent for p in args.rerun.glob("*/results.json"))
    if not cells:
        print(f"error: no cells (*/results.json) under {args.rerun}", file=sys.stderr)
        return 2
    differing = 0
    for cell in cells:
        twin = args.table / cell.name
        if not (twin / "results.json").is_file():
            print(f"{cell.name}: no such cell in {args.table}")
            differing += 1
            continue
        verdict = compare_cell(twin, cell)
        differing += verdict != SAME
        print(f"{cell.name}: {verdict}")
    print(f"{len(cells) - differing} of {len(cells)} cells computed the same numbers")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
