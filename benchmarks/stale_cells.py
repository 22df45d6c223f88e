"""The cells of a comparison table that this checkout's config would run again: each committed cell
is composed from its directory's overrides (the name Hydra gave it) with the table's preset, and its
identity (``fedvtc.sweep.cell_identity``) compared with the cell's saved ``config.yaml``. Run it from
a checkout of the commit a table is to be pinned to, before pinning, e.g. after a method's tuned
values change on one dataset (README "The comparison table"):

    python benchmarks/stale_cells.py benchmarks/results/table_cpu
    python benchmarks/stale_cells.py benchmarks/results/table_cpu \
        --move-to benchmarks/results/table_cpu_cifar10_tuned_on_mnist

``--move-to DIR`` moves each stale cell, as it ran, to ``DIR/<part>/<cell>`` (a table of its own;
copy the pin ``CODE`` beside it). Exit code 0 whether or not cells are stale; 2 on bad input.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def part_experiment(preset: str, part: str) -> str:
    """The preset whose sweep fills ``OUT/<part>/``, by benchmarks/table.sh's naming: ``main`` holds
    the grid of ``table_<preset>``, any other part directory that of ``table_<preset>_<part>``."""
    return f"table_{preset}" if part == "main" else f"table_{preset}_{part}"


def has_experiment(name: str) -> bool:
    """Is there a preset ``experiment=<name>`` in this checkout?"""
    return (REPO / "conf" / "experiment" / f"{name}.yaml").is_file()


def table_parts(table: Path) -> list[str]:
    """The part directories of ``table`` that hold cells."""
    if not table.is_dir():
        return []
    return sorted(d.name for d in table.iterdir() if d.is_dir() and any(d.glob("*/config.yaml")))


def compose_cell(preset: str, part: str, cell: str) -> dict[str, Any]:
    """The resolved config this checkout gives the cell named ``cell`` of ``part``."""
    from hydra import compose, initialize_config_dir

    overrides = [f"experiment={part_experiment(preset, part)}", *cell.split(",")]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)  # type: ignore[return-value]


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two nested configs."""
    from fedvtc.checkpoint import flatten_dotted

    flat_old, flat_new = flatten_dotted(old), flatten_dotted(new)
    return sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))


def stale_cells(table: Path, preset: str) -> list[tuple[Path, list[str]]]:
    """Each cell of ``table`` (finished or not) whose identity this checkout changes, with the keys changed."""
    from fedvtc.sweep import cell_identity

    stale = []
    for part in table_parts(table):
        for config_path in sorted((table / part).glob("*/config.yaml")):
            cell = config_path.parent
            saved = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
            old, new = cell_identity(saved), cell_identity(compose_cell(preset, part, cell.name))  # type: ignore[arg-type]
            if old != new:
                stale.append((cell, changed_keys(old, new)))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="a table directory (benchmarks/results/table_<preset>)")
    parser.add_argument("--preset", help="cpu or paper (default: from the directory's name)")
    parser.add_argument("--move-to", type=Path, metavar="DIR", help="move each stale cell to DIR/<part>/<cell>")
    args = parser.parse_args(argv)
    preset = args.preset or args.table.resolve().name.removeprefix("table_")
    if not has_experiment(f"table_{preset}"):
        print(f"error: no preset experiment=table_{preset}; give --preset cpu or --preset paper", file=sys.stderr)
        return 2
    parts = table_parts(args.table)
    if not parts:
        print(f"error: {args.table} has no part directory with cells (main/, ablations/, ...): not a table directory",
              file=sys.stderr)
        return 2
    unknown = [p for p in parts if not has_experiment(part_experiment(preset, p))]
    if unknown:
        print(f"error: {args.table}: no preset for part(s) {', '.join(unknown)} "
              f"(expected conf/experiment/{part_experiment(preset, unknown[0])}.yaml)", file=sys.stderr)
        return 2
    stale = stale_cells(args.table, preset)
    for cell, keys in stale:
        print(f"{cell.parent.name}/{cell.name}: {', '.join(keys)}")
    print(f"{len(stale)} stale cell(s) in {args.table}")
    if args.move_to:
        for cell, _ in stale:
            destination = args.move_to / cell.parent.name / cell.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(cell), destination)
        print(f"moved {len(stale)} to {args.move_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
