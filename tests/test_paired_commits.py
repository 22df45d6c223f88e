"""benchmarks/paired_commits.py: the same cells run by two commits are matched by name and compared
seed by seed (validation accuracy after the last round) and by the seconds of their later rounds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import paired_commits  # noqa: E402


def _cell(root: Path, name: str, accuracy: float, seconds: list[float], *, finished: bool = True) -> None:
    cell = root / "fedproto" / name
    seed = int(name.split("seed=")[1].split(",")[0])
    cell.mkdir(parents=True)
    rounds = [{"validation_accuracy": accuracy, "seconds": s} for s in seconds]
    (cell / "results.json").write_text(json.dumps({"rounds": rounds, "meta": {"seed": seed},
                                                  "final": {"clients": []} if finished else None}))


def test_cells_are_paired_by_name_and_seed(tmp_path: Path, capsys) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    for seed, (b, a) in enumerate([(0.30, 0.31), (0.20, 0.18)]):
        _cell(before, f"algorithm=fedproto,seed={seed},tuning=cpu", b, [9.0, 4.0, 4.0])
        _cell(after, f"algorithm=fedproto,seed={seed},tuning=cpu", a, [9.0, 3.0, 3.0])
    _cell(after, "algorithm=fedproto,seed=2,tuning=cpu", 0.5, [1.0, 1.0])  # only one side ran it: left out
    _cell(before, "algorithm=local,seed=0,tuning=cpu", 0.5, [1.0, 1.0], finished=False)
    _cell(after, "algorithm=local,seed=0,tuning=cpu", 0.5, [1.0, 1.0])  # unfinished on one side: left out
    [row] = paired_commits.compare(paired_commits.readings(before), paired_commits.readings(after))
    assert row["method"] == "fedproto" and row["seeds"] == [0, 1]
    assert row["difference"] == pytest.approx([1.0, -2.0])
    assert (row["round_seconds_before"], row["round_seconds_after"]) == (4.0, 3.0)  # round 1 (Ray's start) left out
    sys.argv = ["paired_commits.py", str(before), str(after), "--out", str(tmp_path / "out")]
    paired_commits.main()
    assert "| fedproto | 0,1 | 25.0 ± 7.1 | 24.5 ± 9.2 | +1.0, -2.0 | -0.5 ± 2.1 | 4.00 | 3.00 | 0.75 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())[0]["seeds"] == [0, 1]
