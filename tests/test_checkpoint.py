"""Checkpoint and resume: a run stopped and resumed ends exactly as an uninterrupted run.

Each exactness test runs the same tiny config three times: uninterrupted, stopped after round 2
(``faults.stop_after_round``) with a checkpoint every round, and resumed from that checkpoint into a
new directory. Everything in results.json but wall-clock times and memory must be equal, and so must
every client's final state file, tensor for tensor.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from fedvtc.checkpoint import (
    CheckpointError,
    StoppedAfterRound,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedvtc.config import ConfigError, build_settings
from fedvtc.inprocess import run_in_process
from fedvtc.results import is_measurement
from fedvtc.runner import RunError, prepare_run
from fedvtc.state import state_path
from helpers import TINY_FEDVTC, compose_config, run_cli

# Tiny runs (seconds per round); a checkpoint after every round, the stop after round 2.
TINY = ["num_clients=3", "train_fraction=0.03", "partition.min_size=5", "eval.global_subset=200"]
# With the reference classifier (the smallest model), whose scores of the synthetic images are in
# the results too.
FEDVTC = [
    *TINY, "num_rounds=3", *TINY_FEDVTC, "eval.reference_model=cnn_s",
]
# Baselines whose server trains a model across rounds. Four rounds: round 4's download comes from
# the server model trained in round 3, after the resume, so a model that was not restored would show.
SERVER_MODELS = {
    "fedtgp": ("prototype_net", ["algorithm=fedtgp", "algorithm.server_epochs=5"]),
    "fedgen": ("generator", ["algorithm=fedgen", "algorithm.server_epochs=5"]),
}
STOP = ["checkpoint.every=1", "faults.stop_after_round=2"]

def without_measurements(value: Any) -> Any:
    """``value`` (results.json) without timings and memory figures, recursively."""
    if isinstance(value, dict):
        return {
            k: without_measurements(v) for k, v in value.items()
            if not is_measurement(k)
        }
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    return value


def comparable_results(output_dir: Path) -> dict[str, Any]:
    results = without_measurements(json.loads((output_dir / "results.json").read_text()))
    results["meta"].pop("resumed_from", None)
    return results


def assert_identical(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested states: tensors and arrays element for element."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif dataclasses.is_dataclass(a):
        assert_identical(vars(a), vars(b), where)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_resume_is_exact(uninterrupted: Path, resumed: Path, num_clients: int = 3) -> None:
    expected, got = comparable_results(uninterrupted), comparable_results(resumed)
    for key in ("meta", "clients", "rounds", "final"):
        assert got[key] == expected[key], key
    assert got["final"]["global_accuracy"] is not None
    for cid in range(num_clients):
        assert_identical(
            torch.load(state_path(resumed / "client_state", cid), weights_only=False),
            torch.load(state_path(uninterrupted / "client_state", cid), weights_only=False),
            f"client {cid}",
        )


def run_three_ways(base: list[str], root: Path, data_dir: Path) -> dict[str, Path]:
    """Uninterrupted, stopped after round 2, and resumed from that stop: their output dirs."""
    base = [*base, f"data_dir={data_dir}"]
    dirs = {name: root / name for name in ("uninterrupted", "stopped", "resumed")}
    run_in_process(build_settings(compose_config(base), output_dir=dirs["uninterrupted"]))
    # prepare_run writes config.yaml, which the checkpoint keeps for a command-line resume.
    stopped = prepare_run(compose_config([*base, *STOP]), dirs["stopped"])
    with pytest.raises(StoppedAfterRound, match="stopped after round 2 as requested"):
        run_in_process(stopped)
    resumed = build_settings(compose_config([*base, f"resume={dirs['stopped']}"]), output_dir=dirs["resumed"])
    rounds = run_in_process(resumed)
    assert [r["round"] for r in rounds] == list(range(1, resumed.num_rounds + 1))
    return dirs


@pytest.fixture(scope="module")
def fedvtc_runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return run_three_ways(FEDVTC, tmp_path_factory.mktemp("fedvtc"), data_dir)


def test_fedvtc_resume_matches_an_uninterrupted_run(fedvtc_runs: dict[str, Path]) -> None:
    stopped = json.loads((fedvtc_runs["stopped"] / "results.json").read_text())
    assert [r["round"] for r in stopped["rounds"]] == [1, 2] and stopped["final"] is None
    assert_resume_is_exact(fedvtc_runs["uninterrupted"], fedvtc_runs["resumed"])
    resumed = json.loads((fedvtc_runs["resumed"] / "results.json").read_text())
    assert [r["round"] for r in resumed["meta"]["resumed_from"]] == [2]
    # The synthetic images were scored by the checkpoint's copy of the reference classifier.
    assert resumed["rounds"][2]["synthetic_accuracy"] is not None
    assert (fedvtc_runs["resumed"] / "reference_classifier.pt").exists()


@pytest.mark.parametrize("algorithm", sorted(SERVER_MODELS))
def test_resume_restores_the_server_model(algorithm: str, data_dir: Path, tmp_path: Path) -> None:
    model, overrides = SERVER_MODELS[algorithm]
    base = [*TINY, "num_rounds=4", "eval.reference_model=null", *overrides]
    dirs = run_three_ways(base, tmp_path, data_dir)
    assert_resume_is_exact(dirs["uninterrupted"], dirs["resumed"])
    base.append(f"data_dir={data_dir}")
    server = load_checkpoint(dirs["stopped"], build_settings(
        compose_config([*base, f"resume={dirs['stopped']}"]), output_dir=tmp_path / "x"
    )).server["strategy"]
    assert {"global_payload", model} <= set(server)
    # Resumed in place (resume=<dir> hydra.run.dir=<dir>), checkpointing on as before.
    in_place = tmp_path / "in_place"
    shutil.copytree(dirs["stopped"], in_place)
    run_in_process(build_settings(
        compose_config([*base, *STOP, f"resume={in_place}"]), output_dir=in_place
    ))
    assert_resume_is_exact(dirs["uninterrupted"], in_place)
    assert sorted(p.name for p in (in_place / "checkpoint").iterdir()) == ["latest", "round-0003"]


def test_checkpoint_layout_keeps_only_the_latest(fedvtc_runs: dict[str, Path]) -> None:
    root = fedvtc_runs["stopped"] / "checkpoint"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "round-0002"]
    manifest = json.loads((root / "round-0002" / "manifest.json").read_text())
    assert manifest["round"] == 2 and manifest["clients_with_state"] == [0, 1, 2]
    assert {"server.pt", "config.yaml", "reference_classifier.pt", "clients/client_0.pt"} <= set(manifest["files"])
    assert not (fedvtc_runs["uninterrupted"] / "checkpoint").exists()  # checkpoint.every=0


def test_an_interrupted_write_leaves_the_previous_checkpoint(fedvtc_runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(fedvtc_runs["stopped"], run)
    # A crash while writing the next checkpoint leaves a hidden temporary directory behind.
    (run / "checkpoint" / ".round-0003-dead.tmp" / "clients").mkdir(parents=True)
    assert find_checkpoint(run).name == "round-0002"

    # What save_checkpoint reads of a strategy.
    strategy = SimpleNamespace(
        server_state=lambda: {"global_payload": None},
        recorder=SimpleNamespace(state=lambda: {"meta": {}, "clients": [], "rounds": [], "last_eval": []}),
    )
    settings = build_settings(compose_config([*FEDVTC, *STOP]), output_dir=run)
    save_checkpoint(settings, 3, strategy)  # type: ignore[arg-type]
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["latest", "round-0003"]


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    settings = build_settings(compose_config([*FEDVTC, f"resume={tmp_path}"]), output_dir=tmp_path / "out")
    with pytest.raises(CheckpointError, match="no checkpoint in it.*checkpoint.every"):
        load_checkpoint(tmp_path, settings)
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "nowhere", settings)
    with pytest.raises(RunError, match="cannot resume.*no such directory"):
        prepare_run(compose_config([*FEDVTC, f"resume={tmp_path / 'nowhere'}"]), tmp_path / "out")


def _copy_of_checkpoint(fedvtc_runs: dict[str, Path], tmp_path: Path) -> tuple[Path, Any]:
    run = tmp_path / "run"
    shutil.copytree(fedvtc_runs["stopped"], run)
    settings = build_settings(compose_config([*FEDVTC, f"resume={run}"]), output_dir=tmp_path / "out")
    load_checkpoint(run, settings)  # intact: no error
    return run, settings


def test_corrupt_checkpoint_file_is_a_clear_error(fedvtc_runs: dict[str, Path], tmp_path: Path) -> None:
    run, settings = _copy_of_checkpoint(fedvtc_runs, tmp_path)
    client = run / "checkpoint" / "round-0002" / "clients" / "client_1.pt"
    data = bytearray(client.read_bytes())
    data[len(data) // 2] ^= 0xFF
    client.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"clients/client_1.pt is corrupt"):
        load_checkpoint(run, settings)
    (run / "checkpoint" / "round-0002" / "manifest.json").write_text('{"format": "fedvtc-check')
    with pytest.raises(CheckpointError, match="manifest.json is corrupt"):
        load_checkpoint(run, settings)


def test_checkpoint_of_a_complete_run_is_refused(fedvtc_runs: dict[str, Path], tmp_path: Path) -> None:
    run, settings = _copy_of_checkpoint(fedvtc_runs, tmp_path)
    manifest_path = run / "checkpoint" / "round-0002" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["round"] = 3
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="after round 3 of 3: the run is complete"):
        load_checkpoint(run, settings)


def test_mismatched_settings_are_a_clear_error(fedvtc_runs: dict[str, Path], tmp_path: Path) -> None:
    stopped = fedvtc_runs["stopped"]
    other = build_settings(compose_config([*FEDVTC, "seed=1", f"resume={stopped}"]), output_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"other settings.*seed: checkpoint 0, this run 1"):
        load_checkpoint(stopped, other)
    # The command line of a resume may change only what does not change results.
    with pytest.raises(RunError, match=r"seed=1 would change the checkpointed run"):
        prepare_run(compose_config([f"resume={stopped}", "seed=1"]), tmp_path / "a",
                    overrides=[f"resume={stopped}", "seed=1"])
    ok = [f"resume={stopped}", "checkpoint.every=2", "num_rounds=3"]  # num_rounds as it was: allowed
    settings = prepare_run(compose_config(ok), tmp_path / "b", overrides=ok)
    assert (settings.seed, settings.num_rounds, settings.checkpoint.every) == (0, 3, 2)
    assert settings.num_clients == 3 and settings.resume == str(stopped)


def test_flwr_run_refuses_checkpoints() -> None:
    """The ServerApp of `flwr run` cannot reach a deployment's client state files: a clear error."""
    from fedvtc.server_app import server_fn

    context = SimpleNamespace(run_config={"overrides": "checkpoint.every=1"}, run_id=7)
    with pytest.raises(ConfigError, match="run_simulation.py only"):
        server_fn(context)  # type: ignore[arg-type]


def test_stop_after_round_must_be_before_the_last_round() -> None:
    with pytest.raises(ConfigError, match="faults.stop_after_round"):
        build_settings(compose_config([*FEDVTC, "faults.stop_after_round=3"]), output_dir="/tmp/unused")
    with pytest.raises(ConfigError, match="checkpoint.every"):
        build_settings(compose_config([*FEDVTC, "checkpoint.every=-1"]), output_dir="/tmp/unused")


@pytest.mark.slow
def test_flower_simulation_resume_matches_an_uninterrupted_run(
    fedvtc_runs: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    """Stop and resume through run_simulation.py (Ray, Flower's server loop skipping the rounds done).

    The reference is the in-process uninterrupted run of the same config: the two paths run the
    same strategy and client code and give the same results (tests/test_simulation.py checks the
    simulation path against itself).
    """
    stopped, resumed = tmp_path / "stopped", tmp_path / "resumed"
    proc = run_cli([*FEDVTC, *STOP, f"hydra.run.dir={stopped}"], data_dir)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resume={stopped}" in proc.stderr
    refused = run_cli([f"resume={stopped}", "seed=1", f"hydra.run.dir={tmp_path / 'refused'}"], data_dir)
    assert refused.returncode == 2 and "seed=1 would change" in refused.stderr, refused.stderr[-3000:]
    proc = run_cli([f"resume={stopped}", f"hydra.run.dir={resumed}"], data_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_resume_is_exact(fedvtc_runs["uninterrupted"], resumed)
    for name in ("accuracy.png", "synthetic_client0.png", "config.yaml"):
        assert (resumed / name).stat().st_size > 0, name
