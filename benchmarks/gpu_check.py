"""FedVTC and FedProto on a GPU (device=auto), clients in process: the GPU path and its memory.

    python benchmarks/gpu_check.py OUT_DIR [BUDGET_S]

Cells: the table_cpu cell (MNIST, alpha 0.1, seed 0, 3 rounds) and a 2-round table_paper cell
(MNIST, 20 clients, the GPU zoo, p = 512), for FedVTC and FedProto. Prints and saves
``OUT_DIR/gpu_check.json``: per cell wall seconds per round, phase seconds, peak GPU memory per phase
(max over clients), accuracy per round and bytes. No cell starts after BUDGET_S seconds (default
400). In process rather than through Ray, so it runs where only torch, flwr and hydra are installed.
"""
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from fedvtc.config import build_settings
from fedvtc.federated_data import federated_split
from fedvtc.inprocess import run_in_process

OUT = Path(sys.argv[1])
BUDGET_S = float(sys.argv[2]) if len(sys.argv) > 2 else 400
CONF = Path(__file__).resolve().parents[1] / "conf"
CELLS = {
    "cpu_cell_fedvtc": ["experiment=table_cpu", "algorithm=fedvtc"],
    "cpu_cell_fedproto": ["experiment=table_cpu", "algorithm=fedproto"],
    "paper_cell_fedvtc": ["experiment=table_paper", "algorithm=fedvtc", "num_rounds=2", "eval.every=1"],
    "paper_cell_fedproto": ["experiment=table_paper", "algorithm=fedproto", "num_rounds=2", "eval.every=1"],
}
COMMON = ["dataset=mnist", "partition.alpha=0.1", "seed=0", "device=auto"]

print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
start = time.time()
summary = {}
for name, overrides in CELLS.items():
    if time.time() - start > BUDGET_S:
        print("skipped (budget):", name)
        continue
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, *COMMON])
    settings = build_settings(cfg, output_dir=Path("/tmp/gpu_runs") / name)
    federated_split(settings)
    t0 = time.time()
    rounds = run_in_process(settings)
    last = rounds[-1]
    summary[name] = {
        "overrides": [*overrides, *COMMON],
        "total_s": round(time.time() - t0, 1),
        "round_seconds": [round(r["seconds"], 2) for r in rounds],
        "global_accuracy": [r["global_accuracy"] for r in rounds],
        "last_round_phase_seconds_mean_per_client": {k: round(v, 3) for k, v in last["phase_seconds"].items()},
        "last_round_peak_gpu_mb": last.get("peak_gpu_mb"),
        "last_round_phase_peak_gpu_mb": last.get("phase_peak_gpu_mb"),
        "last_round_peak_rss_mb": last.get("peak_rss_mb"),
        "bytes_up_per_client": last["bytes_up_per_client"],
        "array_bytes_up": last["array_bytes_up"], "bytes_up": last["bytes_up"],
    }
    print(json.dumps({name: summary[name]}, indent=1), flush=True)
    (OUT / "gpu_check.json").write_text(json.dumps(summary, indent=1))
