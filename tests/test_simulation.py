"""End to end: real Flower simulations (Ray backend) of the debug preset, of every baseline, and a
two-job sweep."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, TINY_FEDVTC, run_cli

pytestmark = pytest.mark.slow

# The debug preset's FedVTC for 3 rounds (its averaged VTC trains from round 2 and synthesizes from
# round 3), with the tests' tiny VTC budget.
DEBUG_FEDVTC = ["experiment=debug", "num_rounds=3", *TINY_FEDVTC]


@pytest.fixture(scope="module")
def debug_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("debug_run")
    proc = run_cli([*DEBUG_FEDVTC, f"hydra.run.dir={out}"], data_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _round_metrics(results: dict) -> list[tuple]:
    keys = ("global_accuracy", "global_accuracy_std", "local_accuracy", "bytes_up", "bytes_down")
    return [tuple(r[k] for k in keys) for r in results["rounds"]]


def test_results_files_and_accuracy_beats_chance(debug_run: Path) -> None:
    results = json.loads((debug_run / "results.json").read_text())
    for name in ("config.yaml", "accuracy.png", "synthetic_client0.png"):
        assert (debug_run / name).stat().st_size > 0, name
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    for r in results["rounds"]:
        for key in ("global_accuracy", "global_accuracy_std", "local_accuracy", "bytes_up", "bytes_down", "seconds"):
            assert r[key] is not None, key
        assert r["accepted"] == 3 and r["rejected"] == []
    # Round 1 sends nothing down but the empty header; round 2 sends pooled statistics.
    assert results["rounds"][1]["bytes_down"] > results["rounds"][0]["bytes_down"]
    final = results["final"]
    assert final["global_accuracy"] > 0.15  # 10 classes: chance is 0.10
    assert [c["cid"] for c in final["clients"]] == [0, 1, 2]
    assert {c["arch"] for c in final["clients"]} == {"cnn_s", "cnn_m", "cnn_l"}
    assert len(results["clients"]) == 3 and len(results["clients"][0]["class_counts"]) == 10
    assert "vtc_train" in results["rounds"][1]["phase_seconds"]
    # The reference classifier scored the synthetic images of round 3, the first made from an
    # averaged VTC (round 2 only trains the VTCs it averages).
    assert results["meta"]["reference_classifier"]["global_test_accuracy"] > 0.5
    assert results["rounds"][1]["synthetic_accuracy"] is None
    assert 0.0 <= results["rounds"][2]["synthetic_accuracy"] <= 1.0
    # What to check out to reproduce it: this is a git checkout, so the commit is named.
    code = results["meta"]["code"]
    assert code["torch"] and code["flwr"] and len(code["git_commit"] or "") == 40


def test_sweep_runs_two_jobs_and_repeats_the_same_metrics(debug_run: Path, data_dir: Path, tmp_path: Path) -> None:
    # Seed 1 first: the seed-0 cell then runs second, on the first cell's warm Ray runtime and
    # client actors, and is compared with the same cell run alone (the fixture).
    proc = run_cli(["-m", *DEBUG_FEDVTC, "seed=1,0", f"hydra.sweep.dir={tmp_path}"], data_dir, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job1 = json.loads((tmp_path / "0" / "results.json").read_text())
    job0 = json.loads((tmp_path / "1" / "results.json").read_text())
    assert (job0["meta"]["seed"], job1["meta"]["seed"]) == (0, 1)
    # Progress: cells done, the one starting, the time left at the pace so far, each cell's time.
    log = proc.stdout + proc.stderr
    assert f"sweep: cell 1/2 starting (0 done): {' '.join(DEBUG_FEDVTC)} seed=1" in log
    assert re.search(r"sweep: cell 2/2 starting \(1 done, about [\d.]+ min left at [\d.]+ min a cell\)", log)
    assert re.search(r"sweep: cell 2/2 done in [\d.]+ s", log)
    # Started again with the same sweep directory: both cells are known by their resolved configs
    # as finished, and nothing runs or is rewritten.
    written = [(tmp_path / job / "results.json").stat().st_mtime_ns for job in ("0", "1")]
    again = run_cli(["-m", *DEBUG_FEDVTC, "seed=1,0", f"hydra.sweep.dir={tmp_path}"], data_dir)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "sweep: cell 1/2 finished already" in log and "sweep: cell 2/2 finished already" in log
    assert "round 1/3" not in log
    assert [(tmp_path / job / "results.json").stat().st_mtime_ns for job in ("0", "1")] == written
    reference = json.loads((debug_run / "results.json").read_text())
    # Same config and seed as the fixture run: identical metrics, whatever order Ray ran clients in,
    # and although it ran on a warm runtime.
    assert _round_metrics(job0) == _round_metrics(reference)
    assert job0["clients"] == reference["clients"]
    # Another seed: another partition and other metrics.
    assert job1["clients"] != reference["clients"]
    assert job1["meta"]["seed"] == 1

    # The comparison script turns the sweep into one row (two seeds) with mean ± std, and plots.
    out = tmp_path / "table"
    table = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare.py"), str(tmp_path), "--out", str(out), "--plots"],
        capture_output=True, text=True, timeout=120,
    )
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["method"], r["seeds"]) for r in rows] == [("fedvtc", "2")]
    finals = [100 * j["final"]["global_accuracy"] for j in (job0, job1)]
    assert rows[0]["final global acc (%)"] == f"{statistics.fmean(finals):.1f} ± {statistics.stdev(finals):.1f}"
    assert rows[0]["peak RSS MB"] != "–" and rows[0]["synthetic recognised (%)"] != "–"
    assert (tmp_path / "table_accuracy.png").stat().st_size > 0
    assert (tmp_path / "table_bytes.png").stat().st_size > 0


def test_a_failing_client_does_not_stop_the_run(warm_simulation, tmp_path: Path) -> None:
    results = warm_simulation(["experiment=debug", "faults.clients=[1]", "faults.rounds=[2]",
                               "eval.reference_model=null", *TINY_FEDVTC], tmp_path)
    first, second = results["rounds"]
    assert (first["failures"], first["accepted"]) == (0, 3)
    assert (second["failures"], second["accepted"]) == (1, 2)  # pooled from the two others
    assert results["final"]["global_accuracy"] is not None
    assert len(results["final"]["clients"]) == 3  # the failed client is still evaluated


# What round 2 downloads that round 1 did not (round 1 sends every client an empty header).
BASELINE_DOWNLOADS = {
    "fedproto": "averaged prototypes", "fedtgp": "server-trained prototypes", "ccvr": "pooled Gaussians",
    "fedgen": "the generator and mean head", "fedtype": "the averaged proxy model", "local": None,
}


@pytest.mark.parametrize("algorithm", sorted(BASELINE_DOWNLOADS))
def test_every_baseline_runs_two_rounds_through_flower(algorithm: str, warm_simulation, tmp_path: Path) -> None:
    results = warm_simulation(["experiment=debug", f"algorithm={algorithm}", "num_rounds=2"], tmp_path)
    assert results["meta"]["algorithm"] == algorithm and results["final"]["global_accuracy"] > 0
    first, second = results["rounds"]
    for entry in (first, second):
        assert entry["bytes_up"] > 0 and entry["accepted"] == 3 and entry["rejected"] == []
    if BASELINE_DOWNLOADS[algorithm] is None:  # training alone: the empty header both ways, every round
        assert second["bytes_down"] == first["bytes_down"] and second["bytes_up"] == first["bytes_up"]
    else:
        assert second["bytes_down"] > first["bytes_down"], BASELINE_DOWNLOADS[algorithm]
    if algorithm == "ccvr":  # the head is recalibrated once there are pooled Gaussians
        assert "calibration" in second["phase_seconds"] and "calibration" not in first["phase_seconds"]


def test_simulations_of_one_process_share_a_warm_runtime(warm_simulation, tmp_path: Path) -> None:
    """Two cells in one process (as a multirun runs them): the second reuses Ray and the client
    actors of the first (that it gives the metrics of a cold run is checked by the sweep test)."""
    import ray

    from fedvtc import warm_ray

    cell = ["experiment=debug", "algorithm=local", "num_rounds=1"]
    first = warm_simulation(cell, tmp_path / "a")
    pool = warm_ray._pool
    assert pool is not None and ray.is_initialized()
    actors = sorted(map(id, pool.pool))
    second = warm_simulation(cell, tmp_path / "b")
    assert warm_ray._pool is pool and sorted(map(id, pool.pool)) == actors
    assert _round_metrics(first) == _round_metrics(second)
