"""Flower glue: ``ServerApp`` and ``ClientApp`` built from validated ``RunSettings``.

``run_simulation.py`` (Hydra driver) and ``fedvtc.server_app`` / ``fedvtc.client_app`` (``flwr run``)
use the same factories, so both paths run exactly the same code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from flwr.client import ClientApp
from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fedvtc.algorithms import get_algorithm
from fedvtc.checkpoint import attach as attach_checkpoints
from fedvtc.settings import RunSettings, resolve_device
from fedvtc.data import load_dataset
from fedvtc.federated_data import federated_split, global_test_set
from fedvtc.reference import reference_from_cache, reference_key, reference_to_cache, save_reference, train_reference
from fedvtc.results import ResultsRecorder
from fedvtc.strategy import HeteroStrategy

log = logging.getLogger("fedvtc")

# Quiet, offline-safe defaults for Flower and Ray (a user's own setting wins).
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def set_quiet_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def run_meta(s: RunSettings) -> dict[str, Any]:
    """What ran, for ``results.json``."""
    p = s.partition
    label = {
        "dirichlet": f"Dirichlet alpha={p.alpha}",
        "pathological": f"{p.classes_per_client} classes per client",
        "iid": "IID",
    }[p.scheme]
    return {
        "algorithm": s.algorithm_name,
        "label": s.algorithm_label,
        "dataset": s.dataset.name,
        "partition": {"scheme": p.scheme, "alpha": p.alpha, "classes_per_client": p.classes_per_client,
                      "min_size": p.min_size, "test_fraction": p.test_fraction},
        "partition_label": label,
        "zoo": s.zoo_name,
        "models": list(s.models),
        "feature_dim": s.feature_dim,
        "num_clients": s.num_clients,
        "num_rounds": s.num_rounds,
        "seed": s.seed,
        "train_fraction": s.train_fraction,
        "global_test_set": "full official test set" if s.eval.global_subset <= 0
        else f"fixed random subset of {s.eval.global_subset} official test images",
        "eval_every": s.eval.every,
        "device": resolve_device(s.device),
        "dp": dataclasses.asdict(s.dp),
        "max_client_share": s.robust.max_client_share,
        "host": host_info(),
        "code": code_version(),
    }


def host_info() -> dict[str, Any]:
    """The machine, for results.json: the same seed gives identical numbers only on the same kind of
    CPU (kernels differ by instruction set), so the CPU model and torch's capability are recorded."""
    import torch

    model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    return {"machine": platform.machine(), "cpu_model": model, "cpus": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def code_version() -> dict[str, Any]:
    """The code that produced a run: package versions, and the git commit when run from a checkout
    (``git_dirty``: uncommitted changes to tracked files), so a results file names what to check out."""
    versions: dict[str, Any] = {}
    for package in ("fedvtc", "flwr", "torch", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):  # not a checkout, or no git: versions only
        commit, dirty = None, None
    return {**versions, "git_commit": commit, "git_dirty": dirty, "source_sha256": source_fingerprint()}


# Modules that launch or report runs but never run inside one, so they cannot move its numbers.
NOT_IN_A_RUN = frozenset({"deploy.py", "plots.py", "sweep.py"})


@functools.cache  # read once per process: results.json's meta and the judge's cache key both ask
def source_fingerprint() -> str:
    """SHA-256 of this package's Python sources (``NOT_IN_A_RUN`` left out): equal for runs of the
    same code whatever else changed in the repository (docs, tests, benchmarks), so a table built in
    parts over several commits can check that its cells ran the same code (benchmarks/compare.py)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative in NOT_IN_A_RUN:
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_strategy(s: RunSettings) -> HeteroStrategy:
    """The algorithm's strategy with a results recorder for ``s.output_dir``.

    With ``s.resume`` it continues from that checkpoint; with ``checkpoint.every`` it saves them
    (``fedvtc.checkpoint``).
    """
    split = federated_split(s)
    clients = [
        {
            "cid": cid,
            "arch": s.model_name(cid),
            "train_size": int(len(split.train[cid])),
            "test_size": int(len(split.test[cid])),
            "class_counts": split.class_counts[cid].tolist(),
        }
        for cid in range(s.num_clients)
    ]
    meta = run_meta(s)
    # Only for algorithms with synthetic images to score; a resumed run takes the checkpoint's one.
    if s.eval.reference_model and get_algorithm(s.algorithm_name).synthetic_images and not s.resume:
        meta["reference_classifier"] = prepare_reference(s)
    recorder = ResultsRecorder(s.output_dir, meta=meta, clients=clients, num_rounds=s.num_rounds)
    strategy = get_algorithm(s.algorithm_name).strategy.from_settings(
        s,
        num_rounds=s.num_rounds,
        num_clients=s.num_clients,
        num_classes=s.dataset.num_classes,
        feature_dim=s.feature_dim,
        recorder=recorder,
        max_count=float(sum(len(t) for t in split.train)),
        fraction_fit=s.simulation.fraction_fit,
        min_fit_fraction=s.simulation.min_fit_fraction,
        eval_every=s.eval.every,
        max_client_share=s.robust.max_client_share,
    )
    attach_checkpoints(strategy, s)
    return strategy


def prepare_reference(s: RunSettings) -> dict[str, Any]:
    """Train the reference classifier on the whole training pool and save it in the output dir."""
    import numpy as np

    train, _ = load_dataset(s.dataset, s.data_dir)
    split = federated_split(s)
    pool = np.sort(np.concatenate(split.train + split.test))
    test = global_test_set(s)
    key = reference_key(pool=pool, dataset=dataclasses.asdict(s.dataset), arch=s.eval.reference_model,
                        epochs=s.eval.reference_epochs, seed=s.seed, robust=s.eval.reference_robust,
                        global_subset=s.eval.global_subset, code=source_fingerprint())
    accuracy = reference_from_cache(key, s.output_dir)
    if accuracy is not False:
        log.info("reference classifier: the one trained on this pool before (cache %s)", key[:12])
    else:
        model, accuracy = train_reference(
            train.subset(pool), arch=s.eval.reference_model, num_classes=s.dataset.num_classes,
            in_channels=s.dataset.channels, image_size=s.dataset.image_size, epochs=s.eval.reference_epochs,
            seed=s.seed, test=test,
            robust_to=(s.dataset.mean, s.dataset.std) if s.eval.reference_robust else None,
        )
        save_reference(model, s.output_dir, test_accuracy=accuracy)
        reference_to_cache(key, model, accuracy)
    return {"arch": s.eval.reference_model, "min_epochs": s.eval.reference_epochs, "train_size": int(len(pool)),
            "robust": s.eval.reference_robust, "global_test_accuracy": accuracy}


def make_server_app(s: RunSettings) -> ServerApp:
    def server_fn(context: Context) -> ServerAppComponents:
        config = ServerConfig(num_rounds=s.num_rounds, round_timeout=s.simulation.round_timeout)
        return ServerAppComponents(strategy=build_strategy(s), config=config)

    return ServerApp(server_fn=server_fn)


def make_client_app(s: RunSettings) -> ClientApp:
    client_cls = get_algorithm(s.algorithm_name).client

    def client_fn(context: Context):
        cid = int(context.node_config["partition-id"])
        return client_cls(cid, s).to_client()

    return ClientApp(client_fn=client_fn)


def backend_config(s: RunSettings) -> dict[str, Any]:
    """Ray backend: one actor per ``num_cpus_per_client`` CPUs, so clients run in parallel, on the
    cluster of ``simulation.ray_address`` when set (else ``ray.init`` honours ``$RAY_ADDRESS``, and
    without it starts a Ray of its own)."""
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if s.simulation.ray_address:
        init_args["address"] = s.simulation.ray_address
    return {
        "client_resources": {
            "num_cpus": s.simulation.num_cpus_per_client,
            "num_gpus": s.simulation.num_gpus_per_client,
        },
        "init_args": init_args,
    }
