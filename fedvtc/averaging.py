"""Weighted averaging of array lists (FedAvg), for the parts of a model that clients do share."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def weighted_average(arrays: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """Element-wise weighted mean of several equally shaped array lists.

    Args:
        arrays: one list of arrays per participant, all with the same shapes.
        weights: one non-negative weight per participant (e.g. its number of samples).
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(arrays) != len(w) or len(w) == 0 or w.sum() <= 0:
        raise ValueError("need one positive weight per participant")
    w = w / w.sum()
    return [
        sum(wi * np.asarray(a[i], dtype=np.float64) for wi, a in zip(w, arrays)).astype(np.float32)
        for i in range(len(arrays[0]))
    ]
