"""Every method's tuning on the readings cell: each configuration it tried and the best, by validation
accuracy (RESULTS.md "Readings"), so a reader sees that each method had the same budget.

    python benchmarks/tuning_table.py multirun/readings/mnist_a0.1 multirun/tuning/mnist_a0.1 \
        --out benchmarks/results/tuning_mnist_a0.1 [--write-tuned conf/tuned]

A configuration is a run of one seed (the first seed found, 0 in the readings) with a final
validation accuracy; it is named by the algorithm settings that differ from the algorithm's
defaults (conf/algorithm/<name>.yaml). A method is ``algorithm.label`` (so a control or ablation
is its own method). ``--write-tuned DIR`` writes ``cpu_<algorithm>.yaml`` for each baseline whose
best configuration is not its defaults, and removes the file of one whose defaults won
(conf/tuning/cpu.yaml applies them): what was measured, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedvtc.checkpoint import flatten_dotted

REPO = Path(__file__).resolve().parents[1]
FEDVTC_FAMILY = "fedvtc"  # its readings are FedVTC's budget; the baselines are given as many


def algorithm_defaults(name: str) -> dict[str, Any]:
    """The algorithm's settings as its conf/algorithm/<name>.yaml gives them (defaults resolved)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"algorithm={name}"])
    return OmegaConf.to_container(cfg.algorithm, resolve=True)  # type: ignore[return-value]


def changed_settings(algorithm: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``algorithm`` that differ from ``defaults`` (dotted keys, label excluded)."""
    mine, base = flatten_dotted(algorithm), flatten_dotted(defaults)
    return {k: v for k, v in sorted(mine.items()) if k != "label" and base.get(k) != v}


def describe(settings: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        if isinstance(value, float) and value != 0:
            return f"{value:.4g}"
        return str(value)

    return ", ".join(f"{k} = {short(v)}" for k, v in settings.items()) or "defaults"


# What makes the cell a configuration is scored on; runs of different cells are not compared.
CELL_KEYS = ("dataset.name", "partition", "num_clients", "num_rounds", "train_fraction", "train",
             "eval.validation", "eval.global_subset", "zoo.models")


class MixedCells(ValueError):
    """The runs found were scored on different cells or seeds; the message names them."""


def cell_of(config: Any) -> str:
    return json.dumps({key: OmegaConf.select(config, key) for key in CELL_KEYS}, sort_keys=True, default=str)


def collect(dirs: list[Path], *, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Each method's configurations on seed ``seed``: {method: [{settings, validation, run}]}, one per
    distinct setting, best first.

    Raises:
        MixedCells: the runs of that seed were scored on more than one cell (``CELL_KEYS``).
    """
    by_method: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    defaults: dict[str, dict[str, Any]] = {}
    cells: dict[str, str] = {}
    for root in dirs:
        for results_path in sorted(Path(root).rglob("results.json")):
            run = results_path.parent
            results = json.loads(results_path.read_text())
            final = results.get("final") or {}
            if final.get("validation_accuracy") is None or not (run / "config.yaml").exists():
                continue
            loaded = OmegaConf.load(run / "config.yaml")
            if int(loaded.get("seed", 0)) != seed:
                continue  # a configuration is scored on one seed, as the readings chose theirs
            cells.setdefault(cell_of(loaded), str(run))
            config = OmegaConf.to_container(loaded, resolve=True)
            algorithm = config["algorithm"]  # type: ignore[index]
            name = algorithm["name"]
            method = algorithm.get("label") or name
            if name not in defaults:
                defaults[name] = algorithm_defaults(name)
            settings = changed_settings(algorithm, defaults[name])
            key = json.dumps(settings, sort_keys=True, default=str)
            by_method[method].setdefault(key, {"settings": settings, "validation": final["validation_accuracy"],
                                               "run": str(run)})
    if len(cells) > 1:
        raise MixedCells("the runs were scored on different cells (" + ", ".join(CELL_KEYS) + "), e.g. "
                         + " and ".join(cells.values()) + "; give the directories of one cell")
    return {m: sorted(c.values(), key=lambda t: -t["validation"]) for m, c in sorted(by_method.items())}


def summary_rows(configs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for method, trials in configs.items():
        default = next((t for t in trials if not t["settings"]), None)
        best = trials[0]
        rows.append({
            "method": method,
            "configurations": len(trials),
            "defaults (val %)": "–" if default is None else f"{100 * default['validation']:.1f}",
            "best (val %)": f"{100 * best['validation']:.1f}",
            "gain over defaults (pp)": "–" if default is None else f"{100 * (best['validation'] - default['validation']):+.1f}",
            "best configuration": describe(best["settings"]),
        })
    return rows


def markdown(rows: list[dict[str, Any]], configs: dict[str, list[dict[str, Any]]]) -> str:
    heads = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(str(r[h]) for h in heads) + " |" for r in rows]
    for method, trials in configs.items():
        lines += ["", f"**{method}**: {len(trials)} configurations (validation accuracy, %)", ""]
        lines += [f"- {100 * t['validation']:.1f}  {describe(t['settings'])}" for t in trials]
    return "\n".join(lines) + "\n"


def write_tuned(configs: dict[str, list[dict[str, Any]]], directory: Path, source: str, *,
                budget: int = 14, seed: int = 0) -> list[Path]:
    """``cpu_<algorithm>.yaml`` for each baseline whose best configuration is not its defaults; the
    file of a baseline whose defaults won is removed, so the directory says what was measured. A
    baseline with fewer than ``budget`` configurations is left alone (its search is not done)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for method, trials in configs.items():
        best = trials[0]
        if method.startswith(FEDVTC_FAMILY) or method == "local":
            continue
        if len(trials) < budget:
            print(f"{method}: {len(trials)} of {budget} configurations; its tuned file is left as it is")
            continue
        if not best["settings"]:
            stale = directory / f"cpu_{method}.yaml"
            if stale.exists():
                stale.unlink()
                print(f"removed {stale}: {method}'s defaults scored best")
            continue
        default = next((t for t in trials if not t["settings"]), None)
        against = "" if default is None else f" against {100 * default['validation']:.1f} % with its defaults"
        header = [
            "# @package algorithm",
            f"# Best of {method}'s {len(trials)} configurations on the validation split of experiment=readings",
            f"# ({source}; benchmarks/tune_baselines.sh, then benchmarks/tuning_table.py --write-tuned):",
            f"# {100 * best['validation']:.1f} %{against}, seed {seed} (RESULTS.md \"Readings\").",
        ]
        nested: dict[str, Any] = {}
        for dotted, value in best["settings"].items():
            node = nested
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value  # exactly the value measured, not a rounding of it
        path = directory / f"cpu_{method}.yaml"
        path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(nested)))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched (recursively) for results.json")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--seed", type=int, default=0, help="the seed the configurations were scored on (default 0)")
    parser.add_argument("--write-tuned", type=Path, metavar="DIR", help="write each baseline's best as DIR/cpu_<algorithm>.yaml")
    parser.add_argument("--budget", type=int, default=14,
                        help="configurations a baseline needs before --write-tuned touches its file (default 14)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        configs = collect(args.dirs, seed=args.seed)
    except MixedCells as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not configs:
        print("error: no finished run with a validation accuracy under " + ", ".join(map(str, args.dirs))
              + " (run benchmarks/readings.sh or benchmarks/tune_baselines.sh first)", file=sys.stderr)
        return 2
    rows = summary_rows(configs)
    text = markdown(rows, configs)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text)  # not with_suffix: "tuning_mnist_a0.1" has a dot
        Path(f"{args.out}.json").write_text(json.dumps({"summary": rows, "configurations": configs}, indent=1, default=str))
    if args.write_tuned:
        for path in write_tuned(configs, args.write_tuned, " + ".join(map(str, args.dirs)),
                                budget=args.budget, seed=args.seed):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
