"""Reproducible randomness that does not depend on which process runs a client, or when.

Every random draw of a client comes from a generator seeded by (run seed, client id, round, phase),
hashed through numpy's ``SeedSequence``. Two runs with the same seed therefore give the same
numbers whatever order Flower schedules the clients in.
"""

from __future__ import annotations

import numpy as np
import torch

# Phase tags, so that two phases of the same client and round never share a stream.
INIT, PARTITION, LOCAL_TRAIN, VTC_TRAIN, SYNTHESIS, FINETUNE, EVAL_SUBSET, SERVER = range(8)
CALIBRATION = 8  # CCVR: virtual features and the head calibration's batch order
GENERATED_FEATURES = 9  # FedGen: labels and noise of the features a client trains its head on
DP_NOISE = 10  # fedvtc.privacy.dp: the Gaussian noise on a client's class statistics
PRIVACY_EVAL = 11  # fedvtc.privacy.leakage: the synthetic images and held-out subset it measures
VALIDATION = 12  # fedvtc.federated_data: the validation images carved from the training set
AUGMENT = 13  # fedvtc.augment: the random pose of each synthetic image (synthesis.augment)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed determined by the integer ``keys`` (e.g. seed, client id, round, phase)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def torch_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def numpy_rng(*keys: int) -> np.random.Generator:
    """A numpy ``Generator`` seeded from ``keys``."""
    return np.random.default_rng(derive_seed(*keys))
