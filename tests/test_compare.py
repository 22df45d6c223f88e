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
           missing: float | None = 0.2) -> None:
    final = {
        "global_accuracy": acc, "best_round": {"global_accuracy": acc}, "local_accuracy": 0.9,
        "total_bytes_up": 3000, "total_bytes_down": 3000, "total_seconds": 6.0,
        "global_accuracy_held": 0.8, "global_accuracy_missing": missing, "validation_accuracy": acc - 0.01,
        "validation_accuracy_missing": missing,
    }
    results = {
        "meta": {"algorithm": "fedvtc", "label": "fedvtc", "dataset": "mnist", "partition_label": "Dirichlet alpha=0.1",
                 "num_clients": 2, "num_rounds": rounds, "train_fraction": 0.1, "zoo": "cpu", "feature_dim": 64,
                 "global_test_set": "subset", "eval_every": 1, "seed": seed,
                 "code": {"git_commit": commit, "git_dirty": False}},
        "rounds": [{"round": r, "global_accuracy": acc, "synthetic_accuracy": 0.5, "synthetic_accuracy_missing": 0.4,
                    "peak_rss_mb": 100.0, "work_rss_mb": 10.0} for r in range(1, rounds + 1)],
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
