"""Every method's tuning on the readings cell: each configuration it tried and the best, by validation
accuracy (RESULTS.md "Readings"), so a reader sees that each method had the same budget.

    python benchmarks/tuning_table.py multirun/readings/mnist_a0.1 multirun/tuning/mnist_a0.1 \
        --out benchmarks/results/tuning_mnist_a0.1 [--write-tuned conf/tuned]

A configuration is a run of one seed (the first seed found, 0 in the readings) with a final
validation accuracy; it is named by the algorithm settings that differ from the algorithm's
defaults (conf/algorithm/<name>.yaml). A method is ``algorithm.label`` (so a control or ablation
is its own method). ``--write-tuned DIR`` writes ``cpu_<dataset>_<algorithm>.yaml`` for each method
whose search is done (``--budget`` configurations) and whose best configuration is not its defaults,
and removes the file of one whose defaults won (conf/tuning/cpu.yaml applies them, each on its
dataset): what was measured, never typed by hand. FedVTC gets a file where it was searched (on
CIFAR-10: its alignment strength), and its variants take its values (``fedvtc_variants_sharing``).
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
FEDVTC_FAMILY = "fedvtc"  # FedVTC's variants are "fedvtc_<change>"; they take FedVTC's tuned values


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


def dataset_of(configs: dict[str, list[dict[str, Any]]]) -> str:
    """The dataset the configurations were scored on (``collect`` has checked it is one cell)."""
    run = next(t["run"] for trials in configs.values() for t in trials)
    return str(OmegaConf.load(Path(run) / "config.yaml").dataset.name)


def _settings_file(settings: dict[str, Any], header: list[str]) -> str:
    nested: dict[str, Any] = {}
    for dotted, value in settings.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value  # exactly the value measured, not a rounding of it
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(nested))


def fedvtc_variants_sharing(keys: set[str]) -> list[str]:
    """FedVTC's variants (conf/algorithm/fedvtc_*.yaml) that set none of ``keys`` themselves: they
    are "FedVTC with one change", so they run with FedVTC's tuned values (the real-data control
    takes FedVTC's steps); a variant that sets a tuned key (``fedvtc_no_kl``) is about that key."""
    variants = []
    for path in sorted((REPO / "conf" / "algorithm").glob(f"{FEDVTC_FAMILY}_*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        own = {k: v for k, v in own.items() if k not in ("defaults", "label")}  # type: ignore[union-attr]
        if not keys & set(flatten_dotted(own)):
            variants.append(path.stem)
    return variants


def write_tuned(configs: dict[str, list[dict[str, Any]]], directory: Path, source: str, *,
                prefix: str, budget: int = 14, seed: int = 0) -> list[Path]:
    """``<prefix>_<algorithm>.yaml`` (``prefix`` = ``cpu_<dataset>``, which conf/config.yaml's
    ``tuned: ${tuning}_${dataset}_${algorithm}`` applies) for each method whose best configuration
    is not its defaults; the file of a method whose defaults won is removed, so the directory says
    what was measured. A method with fewer than ``budget`` configurations is left alone (its search
    is not done). FedVTC's file also gives its values to the variants that do not set them, by a
    file per variant that names FedVTC's."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for method, trials in configs.items():
        best = trials[0]
        if method == "local" or (method.startswith(FEDVTC_FAMILY) and method != FEDVTC_FAMILY):
            continue  # a variant takes FedVTC's values (below); training alone has none
        if len(trials) < budget:
            print(f"{method}: {len(trials)} of {budget} configurations; its tuned file is left as it is")
            continue
        stale = [directory / f"{prefix}_{method}.yaml"]
        if method == FEDVTC_FAMILY:
            stale += sorted(directory.glob(f"{prefix}_{FEDVTC_FAMILY}_*.yaml"))
        for path in stale:
            if path.exists():
                path.unlink()
                print(f"removed {path}")
        if not best["settings"]:
            print(f"{method}: its defaults scored best")
            continue
        default = next((t for t in trials if not t["settings"]), None)
        against = "" if default is None else f" against {100 * default['validation']:.1f} % with its defaults"
        header = [
            "# @package algorithm",
            f"# Best of {method}'s {len(trials)} configurations on the validation split of experiment=readings",
            f"# ({source}; benchmarks/tune_baselines.sh, then benchmarks/tuning_table.py --write-tuned):",
            f"# {100 * best['validation']:.1f} %{against}, seed {seed} (RESULTS.md \"Readings\").",
        ]
        path = directory / f"{prefix}_{method}.yaml"
        path.write_text(_settings_file(best["settings"], header))
        written.append(path)
        if method != FEDVTC_FAMILY:
            continue
        for variant in fedvtc_variants_sharing(set(best["settings"])):
            path = directory / f"{prefix}_{variant}.yaml"
            path.write_text("\n".join([
                "# @package algorithm",
                f"# {variant} is FedVTC with one change: it runs with FedVTC's tuned values on this dataset.",
                "defaults:",
                f"  - {prefix}_{method}",
            ]) + "\n")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched (recursively) for results.json")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--seed", type=int, default=0, help="the seed the configurations were scored on (default 0)")
    parser.add_argument("--write-tuned", type=Path, metavar="DIR",
                        help="write each method's best as DIR/<tuning>_<dataset>_<algorithm>.yaml")
    parser.add_argument("--tuning", default="cpu", help="the conf/tuning option the files are for (default cpu)")
    parser.add_argument("--budget", type=int, default=14,
                        help="configurations a method needs before --write-tuned touches its file (default 14)")
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
        prefix = f"{args.tuning}_{dataset_of(configs)}"
        for path in write_tuned(configs, args.write_tuned, " + ".join(map(str, args.dirs)), prefix=prefix,
                                budget=args.budget, seed=args.seed):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
