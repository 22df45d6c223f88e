"""Configuration: every preset composes and validates; bad values fail early with their message."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvtc.config import ConfigError, build_settings
from fedvtc.runner import RunError, prepare_run
from helpers import CONF, compose_config, run_cli

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_composes_and_validates(preset: str, tmp_path: Path) -> None:
    settings = build_settings(compose_config([f"experiment={preset}"]), output_dir=tmp_path)
    assert settings.num_clients >= 1 and settings.models


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["partition.alpha=0"], "partition.alpha must be > 0"),
        (["partition.alpha=-1"], "partition.alpha must be > 0"),
        (["zoo.models=[cnn_s,nope]"], "unknown model 'nope'"),
        (["num_rounds=0"], "num_rounds must be >= 1"),
        (["algorithm.schedule=sometimes"], "algorithm.schedule must be one of"),
        (["algorithm.finetune.data=imagined"], "algorithm.finetune.data must be one of"),
        (["device=tpu"], "device must be"),
        (["+algorithm.typo=1"], "unknown key(s) ['typo']"),
        (["algorithm.vtc.train_noise=-0.5"], "algorithm.vtc.train_noise, algorithm.synthesis.noise_scale and"),
        (["algorithm.synthesis.augment=-1"], "algorithm.synthesis.augment must be >= 0"),
        (["algorithm.vtc.train_input=pixels"], "algorithm.vtc.train_input must be one of"),
        (["algorithm.vtc.train_input=class_mean", "algorithm.vtc.train_encoder=true"], "decodes no features"),
        (["algorithm=fedvtc_private_vtc", "algorithm.vtc.adapter=true"], "algorithm.vtc.adapter=true maps"),
        (["algorithm.synthesis.source=oracle_mean"], "trains no VTC, so algorithm.shared_vtc=true"),
        (["algorithm.finetune.data=real"], "trains no VTC, so algorithm.shared_vtc=true"),
        (["algorithm.vtc.style_dim=-1"], "algorithm.vtc.style_dim and algorithm.vtc.style_beta must be >= 0"),
        (["algorithm.vtc.adapter=true", "algorithm.vtc.style_dim=4"], "do not combine"),
        (["algorithm.finetune.norm_stats=sometimes"], "algorithm.finetune.norm_stats must be one of"),
        (["objective=test_accuracy"], "objective must be one of global_accuracy, validation_accuracy"),
        (["objective=validation_accuracy"], "objective=validation_accuracy needs a validation split"),
    ],
)
def test_bad_values_fail_before_training(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        build_settings(compose_config(overrides), output_dir=tmp_path)
    assert message in str(error.value)


def test_more_clients_than_samples_fails_in_prepare(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    cfg = compose_config(["num_clients=5000", "train_fraction=0.05"])
    with pytest.raises(RunError, match="num_clients=5000 exceeds"):
        prepare_run(cfg, tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_missing_dataset_names_the_directory(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    cfg = compose_config([f"data_dir={empty}", "dataset=cifar100"])
    with pytest.raises(RunError) as error:
        prepare_run(cfg, tmp_path / "out")
    assert str(empty) in str(error.value)


def test_cli_reports_bad_value_and_exits_2(data_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["partition.alpha=-0.5", f"hydra.run.dir={tmp_path}"], data_dir, timeout=120)
    assert proc.returncode == 2
    assert "partition.alpha must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_dataset_is_refused_by_hydra_with_the_options(data_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["dataset=imagenet21k", f"hydra.run.dir={tmp_path}"], data_dir, timeout=120)
    assert proc.returncode != 0
    assert "imagenet21k" in proc.stderr and "mnist" in proc.stderr


def _grid(preset: str) -> dict[str, list[str]]:
    from omegaconf import OmegaConf

    params = OmegaConf.load(CONF / "experiment" / f"{preset}.yaml").hydra.sweeper.params
    return {k: [v.strip() for v in str(params[k]).split(",")] for k in params}


BASELINES = {"local", "fedproto", "fedtgp", "fedgen", "ccvr", "fedtype"}


@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_table_presets_sweep_every_method_setting_and_ablation(scale: str) -> None:
    main, ablations = _grid(f"table_{scale}"), _grid(f"table_{scale}_ablations")
    algorithms = {p.stem for p in (CONF / "algorithm").glob("*.yaml")}
    assert {"mnist", "cifar10"} <= set(main["dataset"])
    assert set(main["partition.alpha"]) == {"0.1", "1.0"}
    for preset in (f"table_{scale}", f"table_{scale}_ablations"):
        compose_config([f"experiment={preset}"])  # composes (each cell is checked by the smoke tests)
    if scale == "paper":
        assert set(main["algorithm"]) == {"fedvtc", "fedvtc_real_finetune"} | BASELINES
        assert set(ablations["algorithm"]) == {a for a in algorithms if a.startswith("fedvtc_")}
        assert len(main["seed"]) >= 2
        cfg = compose_config(["experiment=table_paper"])
        assert "cifar100" in main["dataset"] and cfg.num_clients == 20 and cfg.zoo.name == "gpu"
        return
    # The CPU table: 3 seeds, the real-data control beside the baselines, the ablations on
    # alpha = 0.1 of both datasets, and a scale that separates methods (>= 20 rounds, >= 1,000
    # training images per client on average).
    assert set(main["algorithm"]) == {"fedvtc", "fedvtc_real_finetune"} | BASELINES
    assert {"fedvtc_dm", "fedvtc_no_kl", "fedvtc_head_only"} <= set(ablations["algorithm"]) <= algorithms
    assert len(main["seed"]) == len(ablations["seed"]) == 3 and set(ablations["dataset"]) == {"mnist", "cifar10"}
    cfg = compose_config(["experiment=table_cpu", "dataset=cifar10"])
    training_per_client = 50_000 * cfg.train_fraction * (1 - cfg.partition.test_fraction) / cfg.num_clients
    assert cfg.num_rounds >= 20 and training_per_client >= 1000


def _tuned_files() -> dict[tuple[str, str], Path]:
    """{(dataset, algorithm): conf/tuned/cpu_<dataset>_<algorithm>.yaml}."""
    datasets = sorted((p.stem for p in (CONF / "dataset").glob("*.yaml")), key=len, reverse=True)
    files = {}
    for path in sorted((CONF / "tuned").glob("cpu_*.yaml")):
        rest = path.stem.removeprefix("cpu_")
        dataset = next((d for d in datasets if rest.startswith(f"{d}_")), None)
        assert dataset, f"{path.name}: not cpu_<dataset>_<algorithm>.yaml"
        files[dataset, rest.removeprefix(f"{dataset}_")] = path
    return files


def test_the_cpu_table_runs_each_method_with_its_tuned_values_on_each_dataset() -> None:
    """conf/tuning/cpu.yaml applies conf/tuned/cpu_<dataset>_<algorithm>.yaml (written by
    benchmarks/tuning_table.py --write-tuned) over the algorithm's defaults in table_cpu only, on
    that dataset only; the command line still wins, and an algorithm without a file keeps its defaults."""
    from omegaconf import OmegaConf

    from fedvtc.checkpoint import flatten_dotted

    files = _tuned_files()
    assert {d for d, _ in files} >= {"mnist"}, "the CPU table's baselines have tuned values"
    for (dataset, algorithm), path in files.items():
        if algorithm.startswith("fedvtc_"):
            continue  # a variant names FedVTC's file (next test)
        tuned = flatten_dotted(OmegaConf.to_container(OmegaConf.load(path)))
        assert tuned, path.name
        in_table = compose_config(["experiment=table_cpu", f"dataset={dataset}", f"algorithm={algorithm}"]).algorithm
        alone = compose_config([f"dataset={dataset}", f"algorithm={algorithm}"]).algorithm
        for key, value in tuned.items():
            assert OmegaConf.select(in_table, key) == value != OmegaConf.select(alone, key), (path.name, key)
    (dataset, algorithm), path = next(iter(files.items()))
    key, value = next(iter(flatten_dotted(OmegaConf.to_container(OmegaConf.load(path))).items()))
    other = value + 1  # neither the tuned value nor, for the check to mean anything, the default
    assert other != OmegaConf.select(compose_config([f"algorithm={algorithm}"]).algorithm, key)
    assert OmegaConf.select(compose_config(["experiment=table_cpu", f"dataset={dataset}", f"algorithm={algorithm}",
                                            f"algorithm.{key}={other}"]).algorithm, key) == other
    for dataset in ("mnist", "cifar10"):
        for algorithm in {"fedvtc", "ccvr", "fedgen", "fedproto", "fedtgp", "fedtype"} - {a for d, a in files if d == dataset}:
            assert compose_config(["experiment=table_cpu", f"dataset={dataset}", f"algorithm={algorithm}"]).algorithm \
                == compose_config([f"dataset={dataset}", f"algorithm={algorithm}"]).algorithm, (dataset, algorithm)


def test_fedvtcs_variants_run_with_its_tuned_values_except_where_they_change_them() -> None:
    """A variant is FedVTC with one change: on a dataset where FedVTC was tuned, the variant takes
    FedVTC's tuned values (the real-data control takes FedVTC's steps), except the setting it is
    about (fedvtc_no_kl keeps beta = 0)."""
    from omegaconf import OmegaConf

    from fedvtc.checkpoint import flatten_dotted

    files = _tuned_files()
    tuned_on = [d for d, a in files if a == "fedvtc"]
    if not tuned_on:
        pytest.skip("FedVTC has no tuned values on any dataset")
    for dataset in tuned_on:
        tuned = flatten_dotted(OmegaConf.to_container(OmegaConf.load(files[dataset, "fedvtc"])))
        for variant in ("fedvtc_real_finetune", "fedvtc_dm", "fedvtc_head_only", "fedvtc_oracle_images"):
            cfg = compose_config(["experiment=table_cpu", f"dataset={dataset}", f"algorithm={variant}"]).algorithm
            for key, value in tuned.items():
                assert OmegaConf.select(cfg, key) == value, (dataset, variant, key)
        no_kl = compose_config(["experiment=table_cpu", f"dataset={dataset}", "algorithm=fedvtc_no_kl"]).algorithm
        assert no_kl.kl_weight == 0.0 and (dataset, "fedvtc_no_kl") not in files


TABLE_PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("table_*.yaml"))


@pytest.mark.parametrize("preset", TABLE_PRESETS)
def test_every_value_of_a_table_preset_grid_is_a_valid_run(preset: str, tmp_path: Path) -> None:
    # A typo in a sweep grid would otherwise surface an hour into the sweep, in the failing cell.
    # Every value of every axis is composed at least once (the full product takes minutes).
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    grid = OmegaConf.load(CONF / "experiment" / f"{preset}.yaml").hydra.sweeper.params
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in grid.items()]
    cells = [[axis[i % len(axis)] for axis in axes] for i in range(max(len(axis) for axis in axes))]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # once: it is the slow part
        for cell in cells:
            cfg = compose(config_name="config", overrides=[f"experiment={preset}", *cell])
            assert build_settings(cfg, output_dir=tmp_path).num_clients >= 10


def _shell_array(script: Path, name: str) -> list[str]:
    """The quoted lines of a bash array ``name=( ... )`` in ``script``."""
    import re

    body = re.search(rf"^{name}=\((.*?)^\)", script.read_text(), re.S | re.M)
    assert body, f"{script.name} has no array {name}"
    return re.findall(r'^\s*"(.*)"\s*$', body.group(1), re.M)


def test_every_search_space_and_grid_of_the_tuning_names_real_settings() -> None:
    """A knob misspelt in benchmarks/tune_baselines.sh would end its search at its first trial."""
    from omegaconf import OmegaConf

    script = CONF.parent / "benchmarks" / "tune_baselines.sh"
    grids, spaces = _shell_array(script, "GRIDS"), _shell_array(script, "SPACES")
    # The script pairs a grid with a space by position.
    assert [g.split()[0] for g in grids] == [sp.split()[0] for sp in spaces] == [
        f"algorithm={a}" for a in ("fedvtc", "fedproto", "fedtgp", "ccvr", "fedgen", "fedtype")]
    lines = grids + spaces
    missing = object()
    for line in lines:
        algorithm, *knobs = line.split()
        cfg = compose_config([algorithm])
        for knob in knobs:
            key = knob.split("=", 1)[0]
            assert OmegaConf.select(cfg, key, default=missing) is not missing, f"{line}: no setting {key}"


def test_readings_at_the_tables_scale_are_the_table_cell_scored_on_the_validation_split() -> None:
    """experiment=readings_table is table_cpu's cell, tuned values included, with the validation split
    carved out, and it runs only the cells given on the command line (not the table's grid)."""
    from hydra import compose, initialize_config_dir

    for dataset in ("mnist", "cifar10"):
        table = compose_config(["experiment=table_cpu", f"dataset={dataset}"])
        readings = compose_config(["experiment=readings_table", f"dataset={dataset}"])
        assert table.eval.validation == 0 and readings.eval.validation == 2000
        readings.eval.validation = 0
        assert readings == table
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=["experiment=readings_table"], return_hydra_config=True).hydra
    assert hydra_cfg.sweeper.params is None
    assert hydra_cfg.sweep.dir.startswith("multirun/readings_table/")
