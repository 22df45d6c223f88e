"""benchmarks/stale_cells.py: a table's cells whose resolved config this checkout would change (a
method retuned on one dataset) are found by their identity, named with the keys that changed, and
moved aside on request; the others stay."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from helpers import REPO, compose_config

sys.path.insert(0, str(REPO / "benchmarks"))
import stale_cells  # noqa: E402


def _cell(table: Path, part: str, overrides: list[str], preset: str, *changes: str) -> Path:
    """A cell as a sitting leaves it, its config as composed then (``changes`` = what it ran with)."""
    cell = table / part / ",".join(overrides)
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text(OmegaConf.to_yaml(compose_config([f"experiment={preset}", *overrides, *changes])))
    (cell / "results.json").write_text("{}")
    return cell


def test_only_the_cells_whose_config_changed_are_stale_and_move(tmp_path: Path, capsys) -> None:
    table = tmp_path / "table_cpu"
    _cell(table, "main", ["algorithm=local", "dataset=mnist", "partition.alpha=0.1", "seed=0"], "table_cpu")
    retuned = _cell(table, "main", ["algorithm=fedproto", "dataset=mnist", "partition.alpha=0.1", "seed=0"],
                    "table_cpu", "algorithm.proto_weight=7.5")  # ran with other tuned values
    _cell(table, "ablations", ["algorithm=fedvtc_no_kl", "dataset=cifar10", "partition.alpha=0.1", "seed=1"],
          "table_cpu_ablations")

    assert [(cell.name, keys) for cell, keys in stale_cells.stale_cells(table, "cpu")] == \
        [(retuned.name, ["algorithm.proto_weight"])]
    aside = tmp_path / "aside"
    assert stale_cells.main([str(table), "--move-to", str(aside)]) == 0
    assert "1 stale cell(s)" in capsys.readouterr().out
    assert (aside / "main" / retuned.name / "config.yaml").is_file() and not retuned.exists()
    assert len(list(table.glob("*/*/config.yaml"))) == 2
    assert stale_cells.stale_cells(table, "cpu") == []


def test_it_says_what_is_wrong(tmp_path: Path, capsys) -> None:
    assert stale_cells.main([str(tmp_path / "table_nothing")]) == 2
    assert "no preset experiment=table_nothing" in capsys.readouterr().err
    (tmp_path / "table_cpu").mkdir()
    assert stale_cells.main([str(tmp_path / "table_cpu")]) == 2
    assert "not a table directory" in capsys.readouterr().err
    (tmp_path / "table_cpu" / "weird" / "cell").mkdir(parents=True)
    (tmp_path / "table_cpu" / "weird" / "cell" / "config.yaml").write_text("seed: 0\n")
    assert stale_cells.main([str(tmp_path / "table_cpu")]) == 2
    assert "no preset for part(s) weird" in capsys.readouterr().err
