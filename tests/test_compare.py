"""benchmarks/compare.py on a small hand-made set of results files: the new columns, one row per
reading, and the refusal to merge cells that ran with other code or settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import compare  # noqa: E402


def _write(root: Path, name: str, *, acc: float, seed: int = 0, commit: str = "a" * 40, rounds: int = 3,
           missing: float | None = 0.2, label: str = "fedvtc", curve: list[float] | None = None,
           bytes_per_round: int = 2000, source: str | None = None, cpu: str | None = "Intel Xeon") -> None:
    """A results.json as a run writes it. ``curve``: the mean global accuracy of each round (its last
    value is the final accuracy); default ``acc`` in every round."""
    curve = curve or [acc] * rounds
    rounds = len(curve)
    final = {
        "global_accuracy": curve[-1], "best_round": {"global_accuracy": max(curve)}, "local_accuracy": 0.9,
        "total_bytes_up": bytes_per_round * rounds // 2, "total_bytes_down": bytes_per_round * rounds // 2,
        "total_seconds": 2.0 * rounds, "global_accuracy_held": 0.8, "global_accuracy_missing": missing,
        "validation_accuracy": curve[-1] - 0.01, "validation_accuracy_missing": missing,
    }
    results = {
        "meta": {"algorithm": label, "label": label, "dataset": "mnist", "partition_label": "Dirichlet alpha=0.1",
                 "num_clients": 2, "num_rounds": rounds, "train_fraction": 0.1, "zoo": "cpu", "feature_dim": 64,
                 "global_test_set": "subset", "eval_every": 1, "seed": seed,
                 "code": {"git_commit": commit, "git_dirty": False, "source_sha256": source},
                 "host": {"cpu_model": cpu, "torch_cpu_capability": "AVX512"} if cpu else {}},
        "rounds": [{"round": r, "global_accuracy": a, "global_accuracy_missing": missing,
                    "bytes_up": bytes_per_round // 2, "bytes_down": bytes_per_round // 2,
                    "synthetic_accuracy": 0.5, "synthetic_accuracy_missing": 0.4,
                    "peak_rss_mb": 100.0, "work_rss_mb": 10.0} for r, a in enumerate(curve, start=1)],
        "final": final,
    }
    run = root / f"{name},seed={seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))


def test_one_row_per_reading_with_the_group_columns(tmp_path: Path) -> None:
    _write(tmp_path, "algorithm=fedvtc", acc=0.30)
    _write(tmp_path, "algorithm=fedvtc", acc=0.34, seed=1)
    _write(tmp_path, "algorithm.shared_vtc=True,algorithm=fedvtc", acc=0.40, missing=0.35)
    rows = {r["method"]: r for r in compare.collect([tmp_path], by_overrides=True)}
    assert set(rows) == {"algorithm=fedvtc", "algorithm.shared_vtc=True,algorithm=fedvtc"}
    assert rows["algorithm=fedvtc"]["seeds"] == 2
    assert rows["algorithm=fedvtc"]["final global acc (%)"] == "32.0 ± 2.8"
    shared = rows["algorithm.shared_vtc=True,algorithm=fedvtc"]
    assert shared["missing-class acc (%)"] == "35.0" and shared["held-class acc (%)"] == "80.0"
    assert shared["validation acc (%)"] == "39.0" and shared["… of missing classes (%)"] == "40.0"
    # Without --by-overrides both readings are the one algorithm "fedvtc".
    assert [r["seeds"] for r in compare.collect([tmp_path])] == [3]


def test_cells_of_other_code_or_settings_are_refused_by_name(tmp_path: Path) -> None:
    _write(tmp_path / "part1", "algorithm=fedvtc", acc=0.30)
    _write(tmp_path / "part2", "algorithm=fedvtc", acc=0.31, seed=1, commit="b" * 40)
    with pytest.raises(compare.MixedRunsError, match="code b{40}"):
        compare.collect([tmp_path / "part1", tmp_path / "part2"])
    assert len(compare.collect([tmp_path / "part1", tmp_path / "part2"], allow_mixed_code=True)) == 1
    _write(tmp_path / "part3", "algorithm=fedvtc", acc=0.31, seed=2, rounds=5)
    with pytest.raises(compare.MixedRunsError, match="num_rounds"):
        compare.collect([tmp_path / "part1", tmp_path / "part3"])
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), str(tmp_path / "part1"),
                           str(tmp_path / "part3")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "part3" in proc.stderr and "Traceback" not in proc.stderr


def _table(root: Path) -> None:
    """Training alone, CCVR and FedVTC over two seeds of one setting, with known curves and bytes."""
    _write(root, "algorithm=local", label="local", acc=0.30, seed=0, curve=[0.20, 0.28, 0.30], bytes_per_round=0)
    _write(root, "algorithm=local", label="local", acc=0.34, seed=1, curve=[0.22, 0.30, 0.34], bytes_per_round=0)
    _write(root, "algorithm=ccvr", label="ccvr", acc=0.33, seed=0, curve=[0.20, 0.31, 0.33], bytes_per_round=1000)
    _write(root, "algorithm=ccvr", label="ccvr", acc=0.33, seed=1, curve=[0.22, 0.30, 0.33], bytes_per_round=1000)
    # FedVTC reaches local's final accuracy in round 2 with seed 0 and in round 3 with seed 1.
    _write(root, "algorithm=fedvtc", label="fedvtc", acc=0.40, seed=0, curve=[0.20, 0.31, 0.40], bytes_per_round=2**20)
    _write(root, "algorithm=fedvtc", label="fedvtc", acc=0.38, seed=1, curve=[0.20, 0.30, 0.38], bytes_per_round=2**20)
    # An ablation that reaches it with one seed only, and one that never does.
    _write(root, "algorithm=fedvtc_dm", label="fedvtc_dm", acc=0.31, seed=0, curve=[0.2, 0.3, 0.31], bytes_per_round=2**20)
    _write(root, "algorithm=fedvtc_dm", label="fedvtc_dm", acc=0.30, seed=1, curve=[0.2, 0.3, 0.30], bytes_per_round=2**20)
    _write(root, "algorithm=fedvtc_no_kl", label="fedvtc_no_kl", acc=0.1, seed=0, bytes_per_round=2**20)
    _write(root, "algorithm=fedvtc_no_kl", label="fedvtc_no_kl", acc=0.1, seed=1, bytes_per_round=2**20)
    # The real-data control, FedVTC's fine-tuning steps without the generator.
    _write(root, "algorithm=fedvtc_real_finetune", label="fedvtc_real_finetune", acc=0.35, seed=0)
    _write(root, "algorithm=fedvtc_real_finetune", label="fedvtc_real_finetune", acc=0.33, seed=1)


def test_paired_differences_per_seed_against_training_alone_and_the_best_baseline(tmp_path: Path) -> None:
    _table(tmp_path)
    rows = {r["method"]: r for r in compare.collect([tmp_path])}
    # FedVTC - local: +10 and +4 points; - CCVR (the best baseline: 33.0 against local's 32.0): +7 and +5.
    assert rows["fedvtc"]["Δ vs local (pp, per seed)"] == "+7.0 ± 4.2 (+10.0, +4.0)"
    assert rows["fedvtc"]["Δ vs best baseline (pp, per seed)"] == "+6.0 ± 1.4 (+7.0, +5.0) vs ccvr"
    # A baseline is compared with the best other baseline; training alone not with itself.
    assert rows["ccvr"]["Δ vs best baseline (pp, per seed)"] == "+1.0 ± 2.8 (+3.0, -1.0) vs local"
    assert rows["local"]["Δ vs local (pp, per seed)"] == "–"


def test_fedvtc_and_its_variants_are_paired_against_the_real_data_control(tmp_path: Path) -> None:
    _table(tmp_path)
    rows = {r["method"]: r for r in compare.collect([tmp_path])}
    # FedVTC - control: 40 - 35 and 38 - 33 points; an ablation too; nothing else is.
    assert rows["fedvtc"]["Δ vs control (pp, per seed)"] == "+5.0 ± 0.0 (+5.0, +5.0)"
    assert rows["fedvtc_dm"]["Δ vs control (pp, per seed)"] == "-3.5 ± 0.7 (-4.0, -3.0)"
    for method in ("fedvtc_real_finetune", "local", "ccvr"):
        assert rows[method]["Δ vs control (pp, per seed)"] == "–"
    assert "Δ vs control (pp, per seed)" in compare.BRIEF


def test_a_baseline_with_fewer_seeds_is_not_the_best_baseline(tmp_path: Path) -> None:
    _table(tmp_path)
    _write(tmp_path, "algorithm=fedproto", label="fedproto", acc=0.50, seed=0)  # one lucky seed so far
    rows = {r["method"]: r for r in compare.collect([tmp_path])}
    assert rows["fedvtc"]["Δ vs best baseline (pp, per seed)"].endswith("vs ccvr")


def test_megabytes_to_the_final_accuracy_of_training_alone(tmp_path: Path) -> None:
    _table(tmp_path)
    rows = {r["method"]: r for r in compare.collect([tmp_path])}
    column = "MB to local's final acc"
    assert rows["fedvtc"][column] == "2.50"  # 2 rounds of 1 MB (seed 0), 3 rounds (seed 1)
    assert rows["fedvtc_dm"][column] == "2.00 (1/2 seeds)"  # 30 % in round 2 of seed 0; seed 1 never 34 %
    assert rows["fedvtc_no_kl"][column] == "never"
    assert rows["local"][column] == "0.00"  # its own final accuracy, with nothing exchanged
    run = json.loads((tmp_path / "algorithm=fedvtc,seed=0" / "results.json").read_text())
    assert compare.bytes_to_target(run, 0.31) == 2 * 2**20
    assert compare.bytes_to_target(run, 0.41) is None


def test_plots_of_accuracy_missing_classes_and_bytes(tmp_path: Path) -> None:
    _table(tmp_path / "runs")
    out = tmp_path / "table"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), str(tmp_path / "runs"),
                           "--out", str(out), "--plots"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for suffix in ("accuracy", "missing", "bytes"):
        assert (tmp_path / f"table_{suffix}.png").stat().st_size > 10_000
    header = (tmp_path / "table.csv").read_text().splitlines()[0]
    assert "MB to local's final acc" in header and "Δ vs best baseline (pp, per seed)" in header
    brief = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), str(tmp_path / "runs"), "--brief"],
                           capture_output=True, text=True, timeout=120)
    columns = [c.strip() for c in brief.stdout.splitlines()[0].strip("|").split("|")]
    # The setting stays on each row, so the parts of a table of several settings can be told apart.
    assert columns[:4] == ["method", "dataset", "partition", "seeds"] and "total MB" in columns
    assert "s/round" not in columns and len(brief.stdout.splitlines()) == 2 + 6  # six methods


def test_the_source_fingerprint_lets_parts_of_other_commits_merge(tmp_path: Path) -> None:
    # Same package sources, different commits (e.g. only docs changed between the parts): one table.
    _write(tmp_path / "part1", "algorithm=fedvtc", acc=0.30, commit="a" * 40, source="f" * 64)
    _write(tmp_path / "part2", "algorithm=fedvtc", acc=0.31, seed=1, commit="b" * 40, source="f" * 64)
    assert compare.collect([tmp_path / "part1", tmp_path / "part2"])[0]["seeds"] == 2
    _write(tmp_path / "part3", "algorithm=fedvtc", acc=0.31, seed=2, commit="b" * 40, source="e" * 64)
    with pytest.raises(compare.MixedRunsError, match="sources eeeeeeeeeeee"):
        compare.collect([tmp_path / "part1", tmp_path / "part3"])


def test_a_pin_keeps_cells_of_earlier_code_only_for_the_methods_it_names(tmp_path: Path) -> None:
    """A new FedVTC default: FedVTC's cells run again at the new commit, the baselines' are kept."""
    old, new = "a" * 40, "b" * 40
    _write(tmp_path, "algorithm=local", label="local", acc=0.30, commit=old, source="e" * 64)
    _write(tmp_path, "algorithm=ccvr", label="ccvr", acc=0.31, commit=old, source="e" * 64)
    _write(tmp_path, "algorithm=fedvtc", acc=0.40, commit=new, source="f" * 64)
    with pytest.raises(compare.MixedRunsError, match="kept <commit>"):
        compare.collect([tmp_path])
    (tmp_path / "CODE").write_text(f"{new}\n# the baselines do not read FedVTC's settings\nkept {old[:12]} local,ccvr\n")
    assert {r["method"] for r in compare.collect([tmp_path])} == {"local", "ccvr", "fedvtc"}
    # A part of the table has the table's pin.
    (tmp_path / "main").mkdir()
    for cell in tmp_path.glob("algorithm=*"):
        cell.rename(tmp_path / "main" / cell.name)
    assert len(compare.collect([tmp_path / "main"])) == 3
    # A FedVTC cell left from the old code is not kept: it has to run again.
    _write(tmp_path / "main", "algorithm=fedvtc", acc=0.38, seed=1, commit=old, source="e" * 64)
    with pytest.raises(compare.MixedRunsError, match="seed=1"):
        compare.collect([tmp_path])
    (tmp_path / "CODE").write_text(f"{new}\nkept {old}\n")
    with pytest.raises(compare.MixedRunsError, match="kept <commit> <label>"):
        compare.collect([tmp_path])


def test_a_kept_commit_keeps_its_sources_run_at_a_later_commit(tmp_path: Path) -> None:
    """A sitting run from a checkout whose package was the kept commit's records its own commit:
    its cells are that code, and kept for the methods named; another method's are not."""
    old, later, new = "a" * 40, "c" * 40, "b" * 40
    _write(tmp_path, "algorithm=local", label="local", acc=0.30, commit=old, source="e" * 64)
    _write(tmp_path, "algorithm=ccvr", label="ccvr", acc=0.31, commit=later, source="e" * 64)
    _write(tmp_path, "algorithm=fedvtc", acc=0.40, commit=new, source="f" * 64)
    (tmp_path / "CODE").write_text(f"{new}\nkept {old} local,ccvr\n")
    assert {r["method"] for r in compare.collect([tmp_path])} == {"local", "ccvr", "fedvtc"}
    _write(tmp_path, "algorithm=fedgen", label="fedgen", acc=0.31, commit=later, source="e" * 64)
    with pytest.raises(compare.MixedRunsError, match="sources eeeeeeeeeeee"):
        compare.collect([tmp_path])


def test_same_numbers_tells_a_rerun_that_computed_the_same_from_one_that_did_not(tmp_path: Path) -> None:
    _write(tmp_path / "table", "algorithm=local", label="local", acc=0.30)
    _write(tmp_path / "table", "algorithm=ccvr", label="ccvr", acc=0.31)
    _write(tmp_path / "rerun", "algorithm=local", label="local", acc=0.30, commit="b" * 40)
    rerun = tmp_path / "rerun" / "algorithm=local,seed=0" / "results.json"
    results = json.loads(rerun.read_text())
    results["rounds"][1]["seconds"] = 99.0  # measured, not computed: not compared
    rerun.write_text(json.dumps(results))
    script = [sys.executable, str(REPO / "benchmarks" / "same_numbers.py"), str(tmp_path / "table"), str(tmp_path / "rerun")]
    same = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "algorithm=local,seed=0: same numbers" in same.stdout, same.stdout + same.stderr
    _write(tmp_path / "rerun", "algorithm=ccvr", label="ccvr", acc=0.31, curve=[0.31, 0.31, 0.3100001])
    differs = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert differs.returncode == 1 and "differs at rounds[2].global_accuracy" in differs.stdout, differs.stdout


def test_each_row_names_the_machines_its_cells_ran_on(tmp_path: Path) -> None:
    """A table built over sittings on other machines says so: a seed's numbers depend on the CPU kind."""
    _write(tmp_path, "algorithm=fedvtc", acc=0.30)
    _write(tmp_path, "algorithm=fedvtc", acc=0.34, seed=1, cpu="AMD EPYC")
    _write(tmp_path, "algorithm=fedvtc", acc=0.32, seed=2, cpu="AMD EPYC")
    _write(tmp_path, "algorithm=local", acc=0.30, label="local")
    _write(tmp_path, "algorithm=local", acc=0.30, seed=1, label="local", cpu=None)  # a run from before meta.host
    rows = {r["method"]: r for r in compare.collect([tmp_path])}
    assert rows["fedvtc"]["machine"] == "AMD EPYC (AVX512) ×2, Intel Xeon (AVX512) ×1"
    assert rows["local"]["machine"] == "Intel Xeon (AVX512) ×1, unknown ×1"


def test_paired_readings_pairs_validation_accuracy_seed_by_seed(tmp_path: Path) -> None:
    """benchmarks/paired_readings.py: per reading its validation columns, and the paired per-seed
    difference against the chosen reading and against training alone (seeds only one side has drop out)."""
    def cell(name: str, seed: int, val: float, held: float, missing: float) -> None:
        run = tmp_path / f"{name},seed={seed}"
        run.mkdir()
        final = {"validation_accuracy": val, "validation_accuracy_held": held, "validation_accuracy_missing": missing}
        (run / "results.json").write_text(json.dumps(
            {"meta": {"seed": seed}, "final": final, "rounds": [{"synthetic_accuracy_missing": 0.5}]}))

    for seed, (a, b, local) in enumerate([(0.40, 0.43, 0.30), (0.36, 0.37, 0.28)]):
        cell("algorithm.x=all,algorithm=fedvtc", seed, a, 0.7, 0.1)
        cell("algorithm.x=missing,algorithm=fedvtc", seed, b, 0.8, 0.1)
        cell("algorithm=local", seed, local, 0.8, 0.0)
    cell("algorithm=local", 2, 0.5, 0.8, 0.0)  # no partner in the other readings
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "paired_readings.py"), str(tmp_path),
                           "--against", "algorithm.x=all,algorithm=fedvtc"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| algorithm.x=missing"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["0,1", "40.0 ± 4.2", "80.0 ± 0.0", "10.0 ± 0.0"]
    assert cells[6] == "+2.0 ± 1.4 (+3.0, +1.0)"  # against classes=all, seed by seed
    assert cells[7] == "+11.0 ± 2.8 (+13.0, +9.0)"  # against training alone; its seed 2 is unpaired
