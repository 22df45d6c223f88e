"""Every FedVTC ablation and control (``algorithm=fedvtc_<variant>``) runs two rounds (clients and strategy
in process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvtc.config import build_settings
from fedvtc.inprocess import run_in_process
from helpers import CONF, TINY_FEDVTC, TINY_RUN, compose_config

pytestmark = pytest.mark.slow

VARIANTS = sorted(p.stem for p in (CONF / "algorithm").glob("fedvtc_*.yaml"))
# Small enough for seconds per preset; the e2e tests run the full Flower path.
TINY = ["eval.reference_epochs=1"]


def test_every_ablation_of_the_issue_has_a_variant() -> None:
    wanted = {"no_dm", "no_kl", "head_only", "synthetic_only", "final", "shared_vtc", "full_cov", "real_finetune"}
    assert wanted <= {v.removeprefix("fedvtc_") for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_runs_two_rounds(variant: str, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    overrides = [f"algorithm={variant}", *TINY, *TINY_FEDVTC]
    cfg = compose_config(overrides + TINY_RUN)
    settings = build_settings(cfg, output_dir=tmp_path)
    assert settings.algorithm_name == "fedvtc" and settings.algorithm_label == variant
    rounds = run_in_process(settings)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["accepted"] == 3 and not r["rejected"] for r in rounds), rounds[-1]["rejected"]
    assert 0.0 <= rounds[-1]["global_accuracy"] <= 1.0
    assert rounds[1]["bytes_down"] > rounds[0]["bytes_down"]  # global state was sent down
