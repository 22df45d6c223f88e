"""How much a memory layout changes a training step of each zoo model on this machine's CPU.

    python benchmarks/bench_layout.py                      # every CPU-zoo model, MNIST and CIFAR-10 shapes
    python benchmarks/bench_layout.py --steps 30 --threads 2

A training step (forward, cross-entropy, backward, SGD with momentum) on one batch, in the default
(NCHW) layout and in channels-last, the model's weights and the batch converted; the median over
``--steps`` timed steps after three warm-up steps, on ``--threads`` torch threads (1: what a client
gets in the simulation). Both layouts compute the same step up to float rounding. Prints the table
and writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from fedvtc.apps import host_info
from fedvtc.zoo import create_model

REPO = Path(__file__).resolve().parents[1]
MODELS = ("cnn_s", "cnn_m", "cnn_l", "resnet8", "mobilenet_s")
SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds of a training step of ``model`` on the batch (x, y)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for i in range(3 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_layout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dataset, (channels, size) in SHAPES.items():
        for arch in MODELS:
            torch.manual_seed(0)
            model = create_model(arch, num_classes=10, in_channels=channels, image_size=size, feature_dim=64)
            x = torch.randn(args.batch_size, channels, size, size)
            y = torch.randint(0, 10, (args.batch_size,))
            default = step_seconds(model, x, y, args.steps)
            last = step_seconds(copy.deepcopy(model).to(memory_format=torch.channels_last),
                                x.contiguous(memory_format=torch.channels_last), y, args.steps)
            rows.append({"dataset": dataset, "model": arch, "default_ms": 1000 * default,
                         "channels_last_ms": 1000 * last, "ratio": last / default})
    host = host_info()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"machine": f"{host['cpu_model']} ({host['torch_cpu_capability']})", "threads": args.threads,
            "batch_size": args.batch_size, "commit": commit}
    lines = [f"Machine: {meta['machine']}; {args.threads} torch thread(s); batch {args.batch_size}; commit {commit}", "",
             "| dataset | model | default (ms/step) | channels-last (ms/step) | channels-last / default |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['model']} | {r['default_ms']:.1f} | {r['channels_last_ms']:.1f} | {r['ratio']:.2f} |"
              for r in rows]
    markdown = "\n".join(lines)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
