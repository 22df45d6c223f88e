"""Makes every ClientApp process of one SuperNode hostile (tests/test_deployment_hostile.py only).

Put on that SuperNode's PYTHONPATH, this file is imported by every Python process the node starts
(Python imports ``sitecustomize`` at start-up), the ClientApp process of each message among them.
When that process imports ``fedvtc.client``, the upload its client returns after an honest round
of training is corrupted, one way per round: NaN means (round 1), another client's id (round 2),
absurd sample counts (round 3), a payload longer than its header says (round 4).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _corrupt(arrays, metrics, server_round, feature_dim):
    import numpy as np

    from fedvtc.payload import layout

    arrays = [a.copy() for a in arrays]
    if server_round == 1:
        layout(arrays, feature_dim=feature_dim)["means"][0, 0] = np.nan
    elif server_round == 2:
        metrics = {**metrics, "cid": 0}  # speaks for client 0
    elif server_round == 3:
        layout(arrays, feature_dim=feature_dim)["counts"][:] = 1e9
    else:
        arrays = [np.concatenate([arrays[0], np.zeros(7, dtype=arrays[0].dtype)])]
    return arrays, metrics


def _make_hostile(module) -> None:
    honest_fit = module.HeteroClient.fit

    def fit(self, parameters, config):
        arrays, num_examples, metrics = honest_fit(self, parameters, config)
        arrays, metrics = _corrupt(arrays, metrics, int(config["server_round"]), self.s.feature_dim)
        return arrays, num_examples, metrics

    module.HeteroClient.fit = fit


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Lets ``fedvtc.client`` load as usual, then patches it (nothing heavy is imported before)."""

    def find_spec(self, name, path, target=None):
        if name != "fedvtc.client":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _make_hostile(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchOnImport())
