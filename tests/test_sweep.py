"""fedvtc.sweep: a cell of a sweep is known by its resolved config, so a sweep started again runs
only the cells not finished yet; the size of a grid, for the progress line; what a job returns to
its sweeper; and an Optuna search (experiment=tune) that scores on validation and replays its
finished trials. (A basic multirun run twice is in tests/test_simulation.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedvtc.sweep import finished_cell, objective_value, sweep_size, with_added_keys
from helpers import TINY_RUN, run_cli

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


def test_a_sweeper_gets_the_chosen_final_metric_and_a_clear_error_without_it() -> None:
    final = {"global_accuracy": 0.5, "validation_accuracy": 0.25}
    assert objective_value(final, "global_accuracy") == 0.5
    assert objective_value(final, "validation_accuracy") == 0.25
    assert objective_value(None, "validation_accuracy") is None  # a run that did not finish
    with pytest.raises(ValueError, match="objective must be one of"):
        objective_value(final, "test_accuracy")
    with pytest.raises(ValueError, match="needs eval.validation > 0"):
        objective_value({"global_accuracy": 0.5}, "validation_accuracy_missing")
    with pytest.raises(ValueError, match="no client lacks or holds such classes"):
        objective_value(final, "validation_accuracy_missing")


def test_an_optuna_search_scores_on_validation_and_replays_its_trials_when_started_again(
    data_dir: Path, tmp_path: Path
) -> None:
    """experiment=tune: Optuna proposes, each trial is a real simulation that returns its final
    validation accuracy; started again, the seeded sampler proposes the same trials, which are
    found finished by their config and not run again."""
    search = ["-m", "experiment=tune", "algorithm=fedproto", "algorithm.proto_weight=tag(log,interval(0.01,30))",
              *TINY_RUN, "eval.validation=200", "eval.reference_model=null",  # 2 rounds: λ acts from round 2
              "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}"]
    first = run_cli(search, data_dir, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    trials = sorted(tmp_path.glob("algorithm.proto_weight=*/results.json"))
    assert len(trials) == 2
    validation = {p.parent.name: json.loads(p.read_text())["final"]["validation_accuracy"] for p in trials}
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == max(validation.values())  # validation, not the test set's accuracy
    best_dirs = [name for name, value in validation.items() if value == best.best_value]
    chosen = f"algorithm.proto_weight={best.best_params['algorithm.proto_weight']},"
    assert any(name.startswith(chosen) for name in best_dirs), (chosen, validation)
    log = first.stdout + first.stderr
    assert "sweep: cell 1/2 starting" in log and "sweep: cell 2/2 starting" in log

    written = [p.stat().st_mtime_ns for p in trials]
    again = run_cli(search, data_dir, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "sweep: cell 1/2 finished already" in log and "sweep: cell 2/2 finished already" in log
    assert "round 1/2" not in log
    assert [p.stat().st_mtime_ns for p in trials] == written
    assert OmegaConf.load(tmp_path / "optimization_results.yaml").best_value == best.best_value


def test_a_cell_rerun_with_other_settings_in_the_same_directory_is_not_taken_as_finished(
    data_dir: Path, tmp_path: Path
) -> None:
    """A sweep cell rerun in its old directory (same overrides, other tuned values) writes its
    config.yaml first: the earlier run's results.json, final entry and all, is set aside at once, so
    a sweep stopped before this run's first round does not read the new config as finished."""
    from fedvtc.config import to_container
    from fedvtc.runner import prepare_run

    from helpers import compose_config

    old = compose_config([f"data_dir={data_dir}", *TINY_RUN, "algorithm=fedproto", "algorithm.proto_weight=0.1"])
    new = compose_config([f"data_dir={data_dir}", *TINY_RUN, "algorithm=fedproto", "algorithm.proto_weight=3.0"])
    cell = tmp_path / "algorithm=fedproto,seed=0"
    prepare_run(old, cell)
    (cell / "results.json").write_text(json.dumps({"rounds": [], "final": {"global_accuracy": 0.3}}))
    assert finished_cell(tmp_path, to_container(old)) == cell

    prepare_run(new, cell)  # the rerun, stopped before its first round ends
    assert finished_cell(tmp_path, to_container(new)) is None
    assert finished_cell(tmp_path, to_container(old)) is None
    assert json.loads((cell / "results.previous.json").read_text())["final"] == {"global_accuracy": 0.3}


def test_a_cell_saved_before_an_option_existed_is_that_option_at_its_former_value(tmp_path: Path) -> None:
    """ADDED_KEYS: a FedVTC cell saved before ``vtc.style_dim`` and ``synthesis.source`` existed is
    the cell with the values that compute what it computed; any other value is another cell, and a
    baseline's config gets no FedVTC section."""
    old = {**CELL, "algorithm": {"name": "fedvtc", "vtc": {"width": 16}, "synthesis": {"per_class": 50}}}
    run = _run(tmp_path, "0", old)
    now = {**CELL, "algorithm": {"name": "fedvtc", "vtc": {"width": 16, "style_dim": 0, "style_beta": 1.0,
                                                           "style_reads_class": False},
                                 "synthesis": {"per_class": 50, "source": "vtc", "augment": 0.0}}}
    assert finished_cell(tmp_path, now) == run
    styled = {**now, "algorithm": {**now["algorithm"], "vtc": {"width": 16, "style_dim": 8, "style_beta": 1.0,
                                                               "style_reads_class": False}}}
    assert finished_cell(tmp_path, styled) is None
    oracle = {**now, "algorithm": {**now["algorithm"], "synthesis": {"per_class": 50, "source": "oracle_mean"}}}
    assert finished_cell(tmp_path, oracle) is None
    assert finished_cell(tmp_path, {**now, "algorithm": {**now["algorithm"], "vtc": {
        **now["algorithm"]["vtc"], "train_input": "features"}}}) == run
    posed = {**now, "algorithm": {**now["algorithm"], "synthesis": {"per_class": 50, "source": "vtc", "augment": 1.0}}}
    assert finished_cell(tmp_path, posed) is None
    assert with_added_keys({"algorithm": {"name": "local"}}) == {"algorithm": {"name": "local"}}
