"""fedvtc.sweep: a cell of a sweep is known by its resolved config, so a sweep started again runs
only the cells not finished yet; and the size of a grid, for the progress line. (The whole path,
a multirun run twice, is in tests/test_simulation.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from fedvtc.sweep import finished_cell, sweep_size

CELL = {"seed": 0, "algorithm": {"name": "fedvtc", "kl_weight": 1.0}, "hydra": {"job": {"num": 3}}}


def _run(root: Path, name: str, config: dict, *, final: bool = True) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in config.items() if k != "hydra"})))
    (run / "results.json").write_text(json.dumps({"rounds": [], "final": {"global_accuracy": 0.3} if final else None}))
    return run


def test_a_finished_cell_is_found_by_its_config_whatever_its_directory(tmp_path: Path) -> None:
    run = _run(tmp_path, "7", CELL)
    # Hydra's node (job number, paths) is not part of what a cell is.
    assert finished_cell(tmp_path, {**CELL, "hydra": {"job": {"num": 0}}}) == run
    assert finished_cell(tmp_path, {**CELL, "seed": 1}) is None
    assert finished_cell(tmp_path, {**CELL, "algorithm": {"name": "fedvtc", "kl_weight": 0.0}}) is None
    assert finished_cell(tmp_path / "elsewhere", CELL) is None


def test_unfinished_or_damaged_runs_are_run_again(tmp_path: Path) -> None:
    _run(tmp_path, "0", CELL, final=False)  # stopped mid-run: no final entry
    damaged = _run(tmp_path, "1", CELL)
    (damaged / "results.json").write_text("{not json")
    assert finished_cell(tmp_path, CELL) is None


def test_the_size_of_a_grid_counts_the_command_line_over_the_preset() -> None:
    assert sweep_size(["seed=0,1,2", "algorithm=fedvtc"]) == 3
    assert sweep_size(["seed=0,1"], {"algorithm": "fedvtc,local", "seed": "0,1,2"}) == 4
    assert sweep_size([], {"dataset": "mnist,cifar10", "partition.alpha": "0.1,1.0"}) == 4


def test_where_a_cell_runs_is_not_part_of_what_it_is(tmp_path: Path) -> None:
    """Another data directory, a Ray cluster or a cold runtime give the same numbers; a config saved
    before such a key existed still matches; a key that changes the numbers does not."""
    saved = {**CELL, "data_dir": "/old/data", "simulation": {"num_cpus_per_client": 1, "keep_runtime": True}}
    run = _run(tmp_path, "0", saved)
    moved = {**CELL, "data_dir": "/new/data", "verbose": True,
             "simulation": {"num_cpus_per_client": 1, "keep_runtime": False, "ray_address": "10.0.0.5:6379"}}
    assert finished_cell(tmp_path, moved) == run
    assert finished_cell(tmp_path, {**moved, "simulation": {"num_cpus_per_client": 2}}) is None
