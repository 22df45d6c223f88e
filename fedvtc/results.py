"""The results of a run: ``results.json``, the accuracy plot, the console lines and summary.

``ResultsRecorder`` is fed by the strategy (fit outcome, then evaluation, of every round) and
rewrites ``results.json`` atomically after each round, so a run stopped midway keeps every round it
finished. The file's layout:

- ``meta``: what ran (algorithm, dataset, partition, zoo, clients, rounds, seed, evaluation set) and
  with what code (``code``: package versions and the git commit).
- ``clients``: per client id, architecture, local train/test sizes and class counts.
- ``rounds``: one entry per round: ``round``, ``global_accuracy`` (mean over clients),
  ``global_accuracy_std``, ``local_accuracy``, ``local_accuracy_std``, ``per_arch``,
  ``global_accuracy_held`` / ``global_accuracy_missing`` (the official test images of the classes
  a client holds / lacks, mean over clients), ``validation_accuracy`` (+ ``_std``, ``_held``,
  ``_missing``) on the validation set when ``eval.validation`` > 0, ``synthetic_accuracy`` (+
  ``_held``, ``_missing``) for algorithms that make synthetic images,
  ``bytes_up``/``bytes_down`` (all clients together, payload bytes actually sent),
  ``bytes_up_per_client``/``bytes_down_per_client``, ``seconds`` (wall), ``phase_seconds`` (mean
  per client), ``peak_rss_mb`` (peak resident memory of a client process during its round's work,
  max over clients), ``work_rss_mb`` (that peak minus the RSS at the start of the round: what the
  round's work added on top of the runtime and the in-memory dataset), ``phase_peak_rss_mb`` (per
  phase, max over clients), ``phase_added_rss_mb`` (per phase, what it added to the RSS it started
  with, max over clients), ``peak_gpu_mb``/``phase_peak_gpu_mb`` on CUDA, ``accepted``, ``rejected`` (with reasons),
  ``failures``. Rounds without evaluation carry ``null`` accuracies.
- ``final``: the last round's figures plus ``best_round`` (by mean global accuracy, labelled as
  such), totals, and ``clients``: per client id, architecture, global and local accuracy.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("fedvtc")

# Keys of results.json that measure this machine at that moment (wall-clock time, memory) rather than
# what the run computed: two runs of the same configuration agree on everything else.
MEASUREMENT_KEYS = frozenset({
    "seconds", "total_seconds", "phase_seconds", "client_seconds_total", "server_aggregate_seconds",
    "client_eval_seconds_total", "peak_rss_mb", "base_rss_mb", "work_rss_mb", "peak_gpu_mb",
    "phase_peak_rss_mb", "phase_added_rss_mb", "phase_peak_gpu_mb",
})
# Evaluation figures besides global and local accuracy, each a mean over the clients that have it:
# the official test set split by the classes a client holds / lacks, and the validation set
# (eval.validation) whole and split the same way. A client holding every class has no "missing".
GROUP_KEYS = (
    "global_accuracy_held", "global_accuracy_missing",
    "validation_accuracy", "validation_accuracy_held", "validation_accuracy_missing",
)
# The reference classifier's recognition of the synthetic images, overall and per group.
SYNTHETIC_KEYS = ("synthetic_accuracy", "synthetic_accuracy_held", "synthetic_accuracy_missing")
# Per-phase client metrics: seconds, peak RSS, RSS added, peak GPU memory.
PHASE_PREFIXES = ("time_", "mem_", "memadd_", "gpu_")


def is_measurement(key: str) -> bool:
    """Whether ``key`` of results.json is a timing or memory figure (see ``MEASUREMENT_KEYS``)."""
    return key in MEASUREMENT_KEYS or key.startswith(PHASE_PREFIXES)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _mean_of(metrics: list[dict[str, Any]], key: str) -> float | None:
    values = [float(m[key]) for m in metrics if key in m]
    return statistics.fmean(values) if values else None


def _max_of(metrics: list[dict[str, Any]], key: str) -> float | None:
    values = [float(m[key]) for m in metrics if m.get(key) is not None]
    return max(values) if values else None


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class ResultsRecorder:
    """Collects per-round figures and writes them to ``<output_dir>/results.json``.

    Args:
        output_dir: the run's output directory.
        meta: what ran, stored verbatim under ``meta``.
        clients: static per-client facts (cid, arch, sizes, class counts), stored under ``clients``.
        num_rounds: rounds in the run; the last one triggers ``finish``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        meta: dict[str, Any],
        clients: list[dict[str, Any]],
        num_rounds: int,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.meta = meta
        self.clients = clients
        self.num_rounds = num_rounds
        self.rounds: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self._last_eval: list[dict[str, Any]] = []

    @property
    def path(self) -> Path:
        return self.output_dir / "results.json"

    def record_fit(
        self,
        server_round: int,
        *,
        bytes_up: int,
        bytes_down: int,
        array_bytes_up: int,
        array_bytes_down: int,
        clients_sent: int,
        fit_metrics: list[dict[str, Any]],
        rejected: list[dict[str, Any]],
        failures: int,
        server_seconds: float,
    ) -> None:
        """What the fit half of a round produced (before evaluation)."""
        phases: dict[str, list[float]] = defaultdict(list)
        phase_rss: dict[str, list[float]] = defaultdict(list)
        phase_gpu: dict[str, list[float]] = defaultdict(list)
        phase_added: dict[str, list[float]] = defaultdict(list)
        for m in fit_metrics:
            for key, value in m.items():
                for prefix, into in (
                    ("time_", phases), ("mem_", phase_rss), ("memadd_", phase_added), ("gpu_", phase_gpu),
                ):
                    if key.startswith(prefix):
                        into[key[len(prefix):]].append(float(value))
        answered = max(len(fit_metrics) + len(rejected), 1)
        entry = {
            "round": server_round,
            "global_accuracy": None,
            "global_accuracy_std": None,
            "local_accuracy": None,
            "local_accuracy_std": None,
            **dict.fromkeys(GROUP_KEYS),
            "validation_accuracy_std": None,
            "per_arch": {},
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "bytes_up_per_client": bytes_up / answered,
            "bytes_down_per_client": bytes_down / max(clients_sent, 1),
            # The analytic size: raw bytes of the arrays (floats x 4 ...), accepted uploads only.
            "array_bytes_up": array_bytes_up,
            "array_bytes_down": array_bytes_down,
            "seconds": None,
            "phase_seconds": {k: statistics.fmean(v) for k, v in sorted(phases.items())},
            "client_seconds_total": sum(float(m.get("seconds", 0.0)) for m in fit_metrics),
            "server_aggregate_seconds": server_seconds,
            "peak_rss_mb": _max_of(fit_metrics, "peak_rss_mb"),
            "work_rss_mb": _max_of(fit_metrics, "work_rss_mb"),
            "peak_gpu_mb": _max_of(fit_metrics, "peak_gpu_mb"),
            "phase_peak_rss_mb": {k: max(v) for k, v in sorted(phase_rss.items())},
            "phase_added_rss_mb": {k: max(v) for k, v in sorted(phase_added.items())},
            "phase_peak_gpu_mb": {k: max(v) for k, v in sorted(phase_gpu.items())},
            "client_fit": [
                {k: v for k, v in m.items()
                 if k in ("cid", "arch", "seconds", "peak_rss_mb", "base_rss_mb", "work_rss_mb", "peak_gpu_mb")
                 or k.startswith((*PHASE_PREFIXES, "synthetic_", "dp_", "vtc_"))}
                for m in sorted(fit_metrics, key=lambda m: int(m["cid"]))
            ],
            # Reference classifier's verdict on the synthetic images (mean over clients), if any.
            **{key: _mean_of(fit_metrics, key) for key in SYNTHETIC_KEYS},
            # Differential privacy (dp.enabled): the largest epsilon any client has spent so far, at dp_delta.
            "dp_epsilon": _max_of(fit_metrics, "dp_epsilon"),
            "dp_delta": _max_of(fit_metrics, "dp_delta"),
            "clients_sent": clients_sent,
            "accepted": len(fit_metrics),
            "rejected": rejected,
            "failures": failures,
        }
        self.rounds.append(entry)

    def record_eval(self, server_round: int, client_metrics: list[dict[str, Any]]) -> None:
        """Per-client evaluation metrics of a round: mean/std over clients and per architecture."""
        entry = self._entry(server_round)
        client_metrics = sorted(client_metrics, key=lambda m: int(m["cid"]))
        g = [float(m["global_accuracy"]) for m in client_metrics]
        loc = [float(m["local_accuracy"]) for m in client_metrics]
        entry["global_accuracy"], entry["global_accuracy_std"] = mean_std(g)
        entry["local_accuracy"], entry["local_accuracy_std"] = mean_std(loc)
        for key in GROUP_KEYS:
            entry[key] = _mean_of(client_metrics, key)
        validation = [float(m["validation_accuracy"]) for m in client_metrics if "validation_accuracy" in m]
        entry["validation_accuracy_std"] = mean_std(validation)[1] if validation else None
        by_arch: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in client_metrics:
            by_arch[str(m["arch"])].append(m)
        entry["per_arch"] = {
            arch: {
                "clients": len(ms),
                "global_accuracy": statistics.fmean(float(m["global_accuracy"]) for m in ms),
                "local_accuracy": statistics.fmean(float(m["local_accuracy"]) for m in ms),
            }
            for arch, ms in sorted(by_arch.items())
        }
        entry["evaluated_clients"] = len(client_metrics)
        entry["client_eval_seconds_total"] = sum(float(m.get("time_evaluate", 0.0)) for m in client_metrics)
        self._last_eval = [
            {
                "cid": int(m["cid"]),
                "arch": str(m["arch"]),
                "global_accuracy": float(m["global_accuracy"]),
                "local_accuracy": float(m["local_accuracy"]),
                **{key: float(m[key]) for key in GROUP_KEYS if key in m},
            }
            for m in client_metrics
        ]

    def end_round(self, server_round: int, seconds: float) -> None:
        """Close a round: store its wall time, print its line, rewrite results.json."""
        entry = self._entry(server_round)
        entry["seconds"] = seconds
        log.info(self.round_line(entry))
        if server_round >= self.num_rounds:
            self.finish()
        else:
            self.save()

    def round_line(self, e: dict[str, Any]) -> str:
        acc = (
            f"global acc {e['global_accuracy']:.4f} ± {e['global_accuracy_std']:.4f} | "
            f"local acc {e['local_accuracy']:.4f}"
            if e["global_accuracy"] is not None
            else "not evaluated"
        )
        rejected = f" | rejected {len(e['rejected'])}" if e["rejected"] else ""
        if e.get("failures"):
            rejected += f" | failed {e['failures']}"
        if e.get("global_accuracy_missing") is not None:
            acc += f" | missing-class acc {e['global_accuracy_missing']:.4f}"
        if e.get("validation_accuracy") is not None:
            acc += f" | validation acc {e['validation_accuracy']:.4f}"
        if e.get("synthetic_accuracy") is not None:
            acc += f" | synthetic recognised {e['synthetic_accuracy']:.2f}"
            if e.get("synthetic_accuracy_missing") is not None:
                acc += f" (missing classes {e['synthetic_accuracy_missing']:.2f})"
        left = self.num_rounds - e["round"]
        # The time left at the pace of the rounds after the first (round 1 also starts the runtime).
        paced = [r["seconds"] for r in self.rounds if r["round"] > 1 and r.get("seconds") is not None]
        eta = f" | about {left * statistics.fmean(paced) / 60:.1f} min left" if left and paced else ""
        return (
            f"round {e['round']}/{self.num_rounds} | {acc} | up {_human_bytes(e['bytes_up'])} "
            f"down {_human_bytes(e['bytes_down'])} | {e['seconds']:.1f} s{rejected}{eta}"
        )

    def finish(self) -> None:
        """Write the ``final`` entry, results.json, the accuracy plot; print the summary table."""
        evaluated = [r for r in self.rounds if r["global_accuracy"] is not None]
        last = evaluated[-1] if evaluated else self.rounds[-1]
        best = max(evaluated, key=lambda r: r["global_accuracy"]) if evaluated else last
        self.final = {
            "round": last["round"],
            "global_accuracy": last["global_accuracy"],
            "global_accuracy_std": last["global_accuracy_std"],
            "local_accuracy": last["local_accuracy"],
            "local_accuracy_std": last["local_accuracy_std"],
            "per_arch": last["per_arch"],
            "best_round": {
                "round": best["round"],
                "global_accuracy": best["global_accuracy"],
                "global_accuracy_std": best["global_accuracy_std"],
            },
            **{key: last.get(key) for key in (*GROUP_KEYS, "validation_accuracy_std")},
            # The last round in which synthetic images were scored (not every round makes them).
            **{key: next((r[key] for r in reversed(self.rounds) if r.get(key) is not None), None)
               for key in SYNTHETIC_KEYS},
            "total_bytes_up": sum(r["bytes_up"] for r in self.rounds),
            "total_bytes_down": sum(r["bytes_down"] for r in self.rounds),
            "total_seconds": sum(r["seconds"] or 0.0 for r in self.rounds),
            # Memory: the highest figure of any round (None when no client reported one).
            "peak_rss_mb": _max_of(self.rounds, "peak_rss_mb"),
            "work_rss_mb": _max_of(self.rounds, "work_rss_mb"),
            "peak_gpu_mb": _max_of(self.rounds, "peak_gpu_mb"),
            "dp_epsilon": _max_of(self.rounds, "dp_epsilon"),
            "dp_delta": _max_of(self.rounds, "dp_delta"),
            "clients": self._last_eval,
        }
        self.save()
        try:
            from fedvtc.plots import plot_accuracy

            plot_accuracy(self.rounds, self.output_dir / "accuracy.png", title=self._title())
        except Exception as error:  # a plot must never cost the results
            log.warning("accuracy plot not written: %s", error)
        log.info("\n" + self.summary())

    def save(self) -> None:
        write_json_atomic(self.path, self.as_dict())

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue these results (``fedvtc.checkpoint``)."""
        return {"meta": self.meta, "clients": self.clients, "rounds": self.rounds, "last_eval": self._last_eval}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of a checkpoint: its rounds so far and its last evaluation.

        ``meta`` and ``clients`` stay this recorder's own (the checkpoint checks they agree).
        """
        self.rounds = [dict(r) for r in state["rounds"]]
        self._last_eval = [dict(c) for c in state["last_eval"]]

    def as_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "clients": self.clients, "rounds": self.rounds, "final": self.final}

    def summary(self) -> str:
        """A plain-text table: one row per client, then per architecture, then the mean."""
        f = self.final or {}
        lines = [f"Summary: {self._title()} (round {f.get('round')})"]
        lines.append(f"{'client':>6}  {'architecture':<14} {'global acc':>10} {'local acc':>10}")
        for c in f.get("clients", []):
            lines.append(f"{c['cid']:>6}  {c['arch']:<14} {c['global_accuracy']:>10.4f} {c['local_accuracy']:>10.4f}")
        for arch, a in (f.get("per_arch") or {}).items():
            lines.append(f"{'arch':>6}  {arch:<14} {a['global_accuracy']:>10.4f} {a['local_accuracy']:>10.4f}")
        if f.get("global_accuracy") is not None:
            lines.append(
                f"{'mean':>6}  {'':<14} {f['global_accuracy']:>10.4f} {f['local_accuracy']:>10.4f}"
                f"   (global std {f['global_accuracy_std']:.4f}; best round {f['best_round']['round']}: "
                f"{f['best_round']['global_accuracy']:.4f})"
            )
        lines.append(
            f"bytes up {_human_bytes(f.get('total_bytes_up', 0))}, down "
            f"{_human_bytes(f.get('total_bytes_down', 0))}, {f.get('total_seconds', 0.0):.1f} s in rounds"
        )
        return "\n".join(lines)

    def _title(self) -> str:
        m = self.meta
        return f"{m.get('algorithm')} on {m.get('dataset')} ({m.get('partition_label', '')})"

    def _entry(self, server_round: int) -> dict[str, Any]:
        for entry in reversed(self.rounds):
            if entry["round"] == server_round:
                return entry
        raise KeyError(f"round {server_round} has no fit record")
