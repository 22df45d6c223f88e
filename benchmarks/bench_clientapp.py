"""What one deployed ClientApp message costs its SuperNode's machine, before the training itself.

    python benchmarks/bench_clientapp.py                        # this checkout, MNIST
    python benchmarks/bench_clientapp.py --dataset cifar10 --messages 6
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_clientapp.py --label before

In deployment Flower starts a fresh Python process for every message a SuperNode receives (train
or evaluate, every round), and that process imports the ClientApp, composes the run's config, and
builds the client: its share of the data and its saved state. This script times exactly that, in
fresh processes, as the ClientApp's ``client_fn`` does it for a node with a state dir: ``--messages``
processes one after another, the first of which finds the node's state dir empty (a node's first
message), then a local evaluation of the client (the smallest message). Reported per process:
import, config, client construction (data share and state), evaluation, and the process's wall
time. Flower's own part of a message (its process start, gRPC) is not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MESSAGE = r"""
import json, sys, time
start = time.perf_counter()
import fedvtc.client_app  # what Flower imports: the ClientApp object and everything it needs
imported = time.perf_counter()
from hydra import compose, initialize_config_dir
from fedvtc.algorithms import get_algorithm
from fedvtc.config import build_settings
from fedvtc.flwr_config import CONF_DIR, for_node
overrides, node = json.loads(sys.argv[1]), json.loads(sys.argv[2])
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose(config_name="config", overrides=overrides)
cid, s = for_node(build_settings(cfg, output_dir=node["state-dir"] + "/out"), node, run_id=1)
configured = time.perf_counter()
client = get_algorithm(s.algorithm_name).client(cid, s)
built = time.perf_counter()
client.evaluate([], {"server_round": 1, "num_rounds": 1})
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "config_s": configured - imported,
                  "client_s": built - configured, "evaluate_s": done - built,
                  "torchvision_imported": "torchvision" in sys.modules,
                  # torch's optimizers import it (about 1 s); an evaluate message builds none
                  "dynamo_imported": "torch._dynamo" in sys.modules}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--data-dir", default=os.environ.get("FEDVTC_DATA_DIR", str(REPO / "data")))
    parser.add_argument("--out", type=Path, default=None, help="append the result as a JSON line to this file")
    args = parser.parse_args()
    overrides = ["experiment=debug", "num_clients=2", f"dataset={args.dataset}", "eval.reference_model=null"]
    rows = []
    with tempfile.TemporaryDirectory() as state:
        node = {"partition-id": 0, "num-partitions": 2, "data-dir": args.data_dir, "state-dir": state}
        for _ in range(args.messages):
            import time

            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", MESSAGE, json.dumps(overrides), json.dumps(node)],
                                  capture_output=True, text=True, cwd=state)  # not REPO: PYTHONPATH picks the code
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": wall})
    later = rows[1:] or rows
    summary = {"label": args.label, "dataset": args.dataset, "messages": args.messages, "first": rows[0],
               "later_median": {k: statistics.median(r[k] for r in later) for k in rows[0] if k.endswith("_s")},
               "later_torchvision_imported": any(r["torchvision_imported"] for r in later),
               "later_dynamo_imported": any(r["dynamo_imported"] for r in later)}
    print(f"{args.label}, {args.dataset}: seconds per ClientApp process (first message / median of the later ones)")
    for key in ("import_s", "config_s", "client_s", "evaluate_s", "process_s"):
        print(f"  {key[:-2]:9s} {rows[0][key]:6.2f} / {summary['later_median'][key]:6.2f}")
    print(f"  torchvision imported by the later ones: {summary['later_torchvision_imported']}")
    print(f"  torch._dynamo imported by the later ones: {summary['later_dynamo_imported']}")
    if args.out:
        with args.out.open("a") as handle:
            handle.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
