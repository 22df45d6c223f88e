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
    wanted = {"dm", "no_kl", "head_only", "synthetic_only", "final", "private_vtc", "full_cov", "real_finetune"}
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


# Each reading of METHOD.md §3 that is an option rather than a variant file: it composes and runs.
# Two runs cover them all (each run is seconds; the unit tests check what each option does).
READING_OPTIONS = [
    ["algorithm=fedvtc_private_vtc", "algorithm.vtc.epochs=0.5", "algorithm.vtc.dm_space=logits",
     "algorithm.vtc.dm_weight=0.5", "algorithm.vtc.train_encoder=true", "algorithm.vtc.encoder_weight=0.5",
     "algorithm.synthesis.noise_scale=0.5", "algorithm.kl_weight=4.0", "algorithm.kl_reduction=mean",
     "algorithm.vtc.train_noise=0.3"],
    ["algorithm.shared_vtc=true", "algorithm.vtc.train_encoder=true", "algorithm.vtc.synthesize_from=global",
     "algorithm.vtc.style_dim=4", "algorithm.vtc.style_beta=0.5", "algorithm.vtc.style_reads_class=true",
     "algorithm.synthesis.augment=1.0", "num_rounds=3"],
    ["algorithm=fedvtc_style", "algorithm.vtc.train_input=class_mean", "algorithm.vtc.dm_weight=0.5", "num_rounds=3"],
]


@pytest.mark.parametrize("options", READING_OPTIONS, ids=lambda o: " ".join(o))
def test_reading_option_runs(options: list[str], data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    settings = build_settings(compose_config([*TINY, *TINY_FEDVTC, *TINY_RUN, *options]), output_dir=tmp_path)
    rounds = run_in_process(settings)
    assert all(r["accepted"] == 3 and not r["rejected"] for r in rounds), rounds[-1]["rejected"]
    assert "vtc_train" in rounds[1]["phase_seconds"] and rounds[-1]["synthetic_accuracy"] is not None


def test_generation_waits_for_its_start_round(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """start_round=3: the private VTC trains and synthesizes from round 3; the averaged VTC trains
    from round 3 and synthesizes from round 4, with the average of round 3's VTCs. The real-data
    control (its own start_round is 3) trains no VTC, draws nothing, sends no VTC and fine-tunes
    from round 3, as default FedVTC does; so do the oracle controls, which draw their images from
    the clients' pooled training data instead of a decoder."""
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    never, from_3 = [False, False, False], [False, False, True]
    for algorithm, trains, synthesizes, start in (("fedvtc_private_vtc", from_3, from_3, ["algorithm.vtc.start_round=3"]),
                                                  ("fedvtc", from_3, never, ["algorithm.vtc.start_round=3"]),
                                                  ("fedvtc_real_finetune", never, never, []),
                                                  ("fedvtc_oracle_mean", never, from_3, []),
                                                  ("fedvtc_oracle_images", never, from_3, [])):
        cfg = compose_config([f"algorithm={algorithm}", *start, *TINY, *TINY_FEDVTC, *TINY_RUN, "num_rounds=3"])
        rounds = run_in_process(build_settings(cfg, output_dir=tmp_path / algorithm))
        assert ["vtc_train" in r["phase_seconds"] for r in rounds] == trains, algorithm
        assert ["synthesis" in r["phase_seconds"] for r in rounds] == synthesizes, algorithm
        assert ["finetune" in r["phase_seconds"] for r in rounds] == (synthesizes if algorithm != "fedvtc_real_finetune"
                                                                       else from_3), algorithm
        if algorithm != "fedvtc" and algorithm != "fedvtc_private_vtc":
            assert rounds[2]["bytes_down_per_client"] < 20_000  # statistics only, no decoder
        if algorithm == "fedvtc_oracle_images":  # real images of the pooled classes: the judge knows them
            assert rounds[2]["synthetic_accuracy"] > 0.5


def test_synthesis_from_the_averaged_vtc_waits_for_a_trained_average(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """synthesize_from=global: round 2 trains the VTC only (the average it received is untrained);
    round 3 synthesizes with the average of round 2's VTCs, then trains."""
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    cfg = compose_config(["algorithm.shared_vtc=true", "algorithm.vtc.synthesize_from=global", *TINY, *TINY_FEDVTC,
                          *TINY_RUN, "num_rounds=3"])
    rounds = run_in_process(build_settings(cfg, output_dir=tmp_path))
    assert ["vtc_train" in r["phase_seconds"] for r in rounds] == [False, True, True]
    assert ["synthesis" in r["phase_seconds"] for r in rounds] == [False, False, True]
