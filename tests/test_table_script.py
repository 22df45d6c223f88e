"""benchmarks/table.sh: a table is pinned to the commit its first sitting ran (OUT/CODE); a later
sitting from a checkout that has moved on runs the cells from a worktree of that commit, so every
cell of one table runs the same code, and leaves no worktree behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_a_pinned_table_runs_its_cells_from_the_pinned_commit(data_dir: Path, tmp_path: Path) -> None:
    clone = tmp_path / "repo"
    git(REPO, "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone))  # works from a shallow CI clone too
    shutil.copy(REPO / "benchmarks" / "table.sh", clone / "benchmarks" / "table.sh")  # this checkout's script
    for key, value in (("user.email", "test@fedvtc"), ("user.name", "test")):
        git(clone, "config", key, value)
    git(clone, "commit", "--quiet", "--allow-empty", "-am", "the table's code")
    pinned = git(clone, "rev-parse", "HEAD")
    with open(clone / "fedvtc" / "__init__.py", "a") as handle:
        handle.write("# the method moved on after the table was pinned\n")
    git(clone, "commit", "--quiet", "-am", "work on the method")
    out = tmp_path / "table"
    out.mkdir()
    # The pin's first line; the lines after it keep cells of earlier code (compare.py's business).
    (out / "CODE").write_text(f"{pinned}\n# kept from an earlier code\nkept {'0' * 40} fedproto\n")

    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "FEDVTC_CACHE_DIR": "off",
           "FEDVTC_DATA_DIR": str(data_dir)}
    run = subprocess.run(
        ["bash", "benchmarks/table.sh", "cpu", "mnist_a0.1", "algorithm=local", "seed=0", "num_rounds=1",
         "train_fraction=0.05", "eval.global_subset=200", "num_clients=4"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"running its cells from {pinned[:12]}" in run.stdout
    results = sorted((out / "main").glob("*/results.json"))
    assert len(results) == 1
    code = json.loads(results[0].read_text())["meta"]["code"]
    assert code["git_commit"] == pinned and not code["git_dirty"]
    assert (out / "table.md").is_file()
    assert git(clone, "worktree", "list", "--porcelain").count("worktree ") == 1  # the temporary one is gone
