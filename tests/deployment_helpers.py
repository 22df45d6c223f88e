"""What the deployment tests share: the run they deploy and how they read its results."""

from __future__ import annotations

import json
from pathlib import Path

# Two clients, two rounds on 3% of MNIST; no reference classifier (it would add a centrally trained
# model before round 1 and nothing to what these tests check).
OVERRIDES = "experiment=debug num_clients=2 eval.reference_model=null"
RUN_TIMEOUT = 420  # seconds per deployment; the whole run takes 1-2 minutes on 2 idle cores


def results_of(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def round_metrics(results: dict) -> list[tuple]:
    keys = ("global_accuracy", "local_accuracy", "bytes_up", "bytes_down")
    return [tuple(r[k] for k in keys) for r in results["rounds"]]


def check_shape(results: dict) -> None:
    """What a simulation's results.json holds (see test_simulation), for 2 clients and 2 rounds."""
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for r in results["rounds"]:
        for key in ("global_accuracy", "global_accuracy_std", "local_accuracy", "bytes_up", "bytes_down",
                    "seconds", "accepted", "rejected", "failures", "phase_seconds"):
            assert key in r and r[key] is not None, key
    assert results["rounds"][1]["bytes_down"] > results["rounds"][0]["bytes_down"]
    final = results["final"]
    assert final["global_accuracy"] > 0.10
    assert [c["cid"] for c in final["clients"]] == [0, 1]
    assert len(results["clients"]) == 2 and results["meta"]["num_clients"] == 2

