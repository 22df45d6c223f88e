"""Seconds and peak memory per phase of a client's work.

Peak resident memory per phase uses Linux's resettable high-water mark: writing ``5`` to
``/proc/self/clear_refs`` sets ``VmHWM`` back to the current RSS, so ``VmHWM`` read at the end of a
phase is the peak *during* that phase. Where that is not available (macOS, restricted /proc) the
process-wide peak (``ru_maxrss``) is reported instead, which can only grow. On CUDA the peak
allocated GPU memory is reset and read per phase the same way.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start (or the last ``reset_peak_rss``), MiB."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    """Resident memory of this process now, MiB (None where /proc is unavailable)."""
    return _status_mb("VmRSS")


def release_freed_memory() -> None:
    """Hand back to the OS the heap memory that glibc's allocator keeps after tensors are freed.

    A Ray actor serves client after client; each round allocates and frees tensors of many sizes
    (the VTC's activations, the synthetic set), and glibc keeps the freed pages, so the process's
    resident memory creeps up round after round without anything being alive in it. A no-op where
    the C library is not glibc.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def reset_peak_rss() -> bool:
    """Set the process's peak-RSS mark to its current RSS; False where the OS does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PhaseTimer:
    """Accumulates wall seconds and peak memory per named phase: ``with timer("vtc_train"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss: dict[str, float] = {}
        self.added_rss: dict[str, float] = {}  # peak during the phase minus RSS at its start
        self.peak_gpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak_rss()
        rss_at_start = current_rss_mb()
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
                gpu = torch.cuda.max_memory_allocated() / 2**20
                self.peak_gpu[phase] = max(self.peak_gpu.get(phase, 0.0), gpu)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            peak = peak_rss_mb()
            self.peak_rss[phase] = max(self.peak_rss.get(phase, 0.0), peak)
            if rss_at_start is not None:
                self.added_rss[phase] = max(self.added_rss.get(phase, 0.0), peak - rss_at_start)

    def as_metrics(self) -> dict[str, float]:
        """``time_<phase>`` (s), ``mem_<phase>`` (peak RSS, MiB), ``memadd_<phase>`` (what the phase
        added to the RSS it started with, MiB) and on CUDA ``gpu_<phase>`` (peak allocated, MiB)."""
        metrics = {f"time_{phase}": round(s, 4) for phase, s in self.seconds.items()}
        metrics.update({f"mem_{phase}": round(m, 1) for phase, m in self.peak_rss.items()})
        metrics.update({f"memadd_{phase}": round(m, 1) for phase, m in self.added_rss.items()})
        metrics.update({f"gpu_{phase}": round(m, 1) for phase, m in self.peak_gpu.items()})
        return metrics
