"""benchmarks/tuning_table.py on hand-made runs: each method's configurations named by what differs
from its defaults, the best by validation accuracy, one seed only, and conf/tuned files written
from what was measured (none for a method whose defaults won or whose search is not done), FedVTC's
shared with its variants."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import REPO, compose_config

sys.path.insert(0, str(REPO / "benchmarks"))
import tuning_table  # noqa: E402


def _run(root: Path, name: str, algorithm: list[str], validation: float, *, seed: int = 0) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = compose_config([*algorithm, f"seed={seed}"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run / "results.json").write_text(json.dumps({"final": {"validation_accuracy": validation}}))


def test_each_method_gets_its_configurations_and_the_best_is_written_as_tuned(tmp_path: Path) -> None:
    grid, search = tmp_path / "readings", tmp_path / "tuning" / "fedproto"
    _run(grid, "fedproto", ["algorithm=fedproto"], 0.30)
    _run(grid, "fedproto_10", ["algorithm=fedproto", "algorithm.proto_weight=10.0"], 0.28)
    _run(grid, "fedproto_seed1", ["algorithm=fedproto", "algorithm.proto_weight=0.5"], 0.99, seed=1)  # another seed
    _run(search, "a", ["algorithm=fedproto", "algorithm.proto_weight=0.123456"], 0.33)
    _run(grid, "fedtgp", ["algorithm=fedtgp"], 0.31)
    _run(grid, "fedtgp_10", ["algorithm=fedtgp", "algorithm.proto_weight=10.0"], 0.27)
    _run(grid, "fedvtc", ["algorithm=fedvtc"], 0.38)
    _run(grid, "fedvtc_kl", ["algorithm=fedvtc", "algorithm.kl_weight=4.0"], 0.37)
    (grid / "unfinished").mkdir()
    (grid / "unfinished" / "results.json").write_text(json.dumps({"final": None}))

    configs = tuning_table.collect([grid, tmp_path / "tuning"])
    rows = {r["method"]: r for r in tuning_table.summary_rows(configs)}
    assert rows["fedproto"]["configurations"] == 3
    assert rows["fedproto"]["best configuration"] == "proto_weight = 0.1235"
    assert (rows["fedproto"]["defaults (val %)"], rows["fedproto"]["best (val %)"]) == ("30.0", "33.0")
    assert rows["fedproto"]["gain over defaults (pp)"] == "+3.0"
    assert rows["fedtgp"]["best configuration"] == "defaults"
    assert rows["fedvtc"]["configurations"] == 2

    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "cpu_mnist_fedtgp.yaml").write_text("proto_weight: 10.0\n")  # an earlier winner
    (tmp_path / "tuned" / "cpu_mnist_ccvr.yaml").write_text("calibration_epochs: 5\n")
    _run(grid, "ccvr_1", ["algorithm=ccvr", "algorithm.calibration_epochs=2"], 0.40)  # 1 configuration only
    configs = tuning_table.collect([grid, tmp_path / "tuning"])
    assert tuning_table.dataset_of(configs) == "mnist"
    written = tuning_table.write_tuned(configs, tmp_path / "tuned", "test runs", prefix="cpu_mnist", budget=2)
    assert not (tmp_path / "tuned" / "cpu_mnist_fedtgp.yaml").exists()
    assert (tmp_path / "tuned" / "cpu_mnist_ccvr.yaml").read_text() == "calibration_epochs: 5\n"  # search not done
    assert [p.name for p in written] == ["cpu_mnist_fedproto.yaml"]  # not FedVTC, not FedTGP (defaults won)
    tuned = OmegaConf.load(written[0])
    assert dict(tuned) == {"proto_weight": 0.123456}  # the value measured, unrounded
    assert written[0].read_text().startswith("# @package algorithm\n# Best of fedproto's 3 configurations")


def test_fedvtcs_best_is_written_and_its_variants_take_it_except_the_one_about_it(tmp_path: Path) -> None:
    for i, (beta, score) in enumerate(((1.0, 0.10), (0.0, 0.12), (0.015625, 0.15))):
        _run(tmp_path / "readings", f"fedvtc_{i}", ["algorithm=fedvtc", f"algorithm.kl_weight={beta}"], score)
    _run(tmp_path / "readings", "no_kl", ["algorithm=fedvtc_no_kl"], 0.5)  # an ablation: its own method, never written
    tuned = tmp_path / "tuned"
    written = tuning_table.write_tuned(tuning_table.collect([tmp_path]), tuned, "test runs", prefix="cpu_mnist", budget=3)
    names = {p.name for p in written}
    assert OmegaConf.load(tuned / "cpu_mnist_fedvtc.yaml") == {"kl_weight": 0.015625}  # the best that is not 1.0
    assert {"cpu_mnist_fedvtc_real_finetune.yaml", "cpu_mnist_fedvtc_dm.yaml"} <= names
    assert "cpu_mnist_fedvtc_no_kl.yaml" not in names  # it sets kl_weight itself
    assert "  - cpu_mnist_fedvtc\n" in (tuned / "cpu_mnist_fedvtc_dm.yaml").read_text()
    # Hydra applies them as conf/config.yaml does: the variant gets FedVTC's beta.
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    for path in written:
        shutil.copy(path, conf / "tuned" / path.name)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose("config", overrides=["tuning=cpu", "algorithm=fedvtc_dm"]).algorithm.kl_weight == 0.015625
        assert compose("config", overrides=["tuning=cpu", "algorithm=fedvtc_no_kl"]).algorithm.kl_weight == 0.0
        assert compose("config", overrides=["tuning=cpu", "dataset=fashion_mnist", "algorithm=fedvtc_dm"]).algorithm.kl_weight \
            == compose("config", overrides=["algorithm=fedvtc_dm"]).algorithm.kl_weight
    # When FedVTC's defaults win, its file and its variants' go.
    _run(tmp_path / "again", "fedvtc", ["algorithm=fedvtc"], 0.9)  # the defaults, scored again (first found)
    configs = tuning_table.collect([tmp_path / "again", tmp_path / "readings"])
    tuning_table.write_tuned(configs, tuned, "test runs", prefix="cpu_mnist", budget=3)
    assert not list(tuned.glob("cpu_mnist_fedvtc*.yaml"))


def test_runs_of_different_cells_are_not_compared(tmp_path: Path) -> None:
    _run(tmp_path, "a", ["algorithm=fedproto"], 0.30)
    _run(tmp_path, "b", ["algorithm=fedproto", "algorithm.proto_weight=0.1", "num_rounds=7"], 0.35)
    _run(tmp_path, "c", ["algorithm=fedproto", "algorithm.proto_weight=0.2"], 0.99, seed=3)  # another seed: left out
    with pytest.raises(tuning_table.MixedCells, match="different cells"):
        tuning_table.collect([tmp_path])
    assert [t["validation"] for t in tuning_table.collect([tmp_path], seed=3)["fedproto"]] == [0.99]


def test_it_says_what_is_missing(tmp_path: Path, capsys) -> None:
    assert tuning_table.main([str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert tuning_table.main([str(tmp_path)]) == 2
    assert "no finished run with a validation accuracy" in capsys.readouterr().err
