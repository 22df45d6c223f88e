"""The FedVTC strategy on hand-built client results, malformed ones included (no network)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedvtc.algorithms.fedvtc import FedVTCStrategy
from fedvtc.payload import Payload, decode, encode, layout, payload_nbytes
from fedvtc.results import ResultsRecorder
from fedvtc.stats import class_statistics, pool_statistics

C, P = 10, 4
OK = Status(code=Code.OK, message="")


def _strategy(tmp_path: Path, **kwargs) -> FedVTCStrategy:
    recorder = ResultsRecorder(tmp_path, meta={"algorithm": "fedvtc"}, clients=[], num_rounds=3)
    return FedVTCStrategy(
        num_rounds=3, num_clients=5, num_classes=C, feature_dim=P, recorder=recorder,
        max_count=10_000, **kwargs,
    )


def _client_stats(seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(30, P)) + seed
    y = rng.choice([seed % C, (seed + 3) % C], size=30)
    return z, y, class_statistics(z, y)


def _result(cid, arrays, n=30):
    proxy = SimpleNamespace(cid=f"node-{cid}")  # the strategy only names the node in its log
    return proxy, FitRes(OK, ndarrays_to_parameters(arrays), n, {"cid": cid, "arch": "cnn_s", "seconds": 1.0})


def test_pools_valid_uploads_and_rejects_malformed_ones(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    strategy._fit_sent = 5
    good = [_client_stats(s) for s in (0, 1, 2)]
    nan = encode(Payload(good[0][2]))
    layout(nan, feature_dim=P)["means"][:] = np.nan
    wrong_shape = encode(Payload(class_statistics(np.zeros((4, P + 2)), np.arange(4))))
    results = [_result(i, encode(Payload(s))) for i, (_, _, s) in enumerate(good)]
    results += [_result(3, nan), _result(4, wrong_shape)]
    strategy.min_fit_fraction = 0.5
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics == {"accepted": 3, "rejected": 2}
    pooled = decode(parameters_to_ndarrays(parameters), num_classes=C, feature_dim=P).stats
    z = np.concatenate([g[0] for g in good])
    y = np.concatenate([g[1] for g in good])
    expected = class_statistics(z, y)
    np.testing.assert_array_equal(pooled.classes, expected.classes)
    np.testing.assert_allclose(pooled.means, expected.means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled.second, expected.second, rtol=1e-4, atol=1e-5)
    entry = strategy.recorder.rounds[-1]
    assert entry["array_bytes_up"] == sum(payload_nbytes(encode(Payload(s))) for _, _, s in good)
    assert entry["bytes_up"] > entry["array_bytes_up"]  # the wire adds a header, and counts rejected uploads
    reasons = {r["cid"]: r["reason"] for r in entry["rejected"]}
    assert "NaN" in reasons[3] and "header announces" in reasons[4]


def test_spoofed_ids_duplicates_and_garbage_are_rejected(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_fit_fraction=0.1)
    strategy._fit_sent = 4
    _, _, s = _client_stats(0)
    garbage = _result(2, [])
    garbage[1].parameters.tensors = [b"not a numpy array"]
    results = [_result(0, encode(Payload(s))), _result(0, encode(Payload(s))), _result(99, encode(Payload(s))), garbage]
    _, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics == {"accepted": 1, "rejected": 3}


def _from(node: str, cid: int, payload: list) -> tuple:
    proxy, res = _result(cid, payload)
    proxy.cid = node
    return proxy, res


def test_a_node_cannot_speak_for_another_client(tmp_path: Path) -> None:
    """The first accepted upload binds a node and its client id for the run: a node claiming
    another node's id is rejected (the owner is not), and so is a node changing its id; two unbound
    nodes claiming one id in one round are both rejected, as nobody can tell which one it is."""
    strategy = _strategy(tmp_path, min_fit_fraction=0.1)
    strategy._fit_sent = 3
    s = [encode(Payload(_client_stats(i)[2])) for i in range(3)]
    _, metrics = strategy.aggregate_fit(1, [_from("a", 0, s[0]), _from("b", 1, s[1]), _from("c", 1, s[2])], [])
    assert metrics == {"accepted": 1, "rejected": 2}
    assert {r["reason"] for r in strategy.recorder.rounds[-1]["rejected"]} == {"client id 1 claimed by 2 nodes in one round"}
    # Round 2: c spoofs a's id (first in the list, so order cannot save it); a changes its own.
    _, metrics = strategy.aggregate_fit(2, [_from("c", 0, s[2]), _from("a", 0, s[0]), _from("b", 1, s[1])], [])
    assert metrics == {"accepted": 2, "rejected": 1}
    assert strategy.recorder.rounds[-1]["rejected"] == [{"cid": 0, "reason": "client id 0 belongs to node a"}]
    _, metrics = strategy.aggregate_fit(3, [_from("a", 2, s[0]), _from("b", 1, s[1])], [])
    assert strategy.recorder.rounds[-1]["rejected"] == [{"cid": 2, "reason": "node a is client 0, not client 2"}]
    # Node b left (a restart without authentication gives a new node id): its id is free again.
    strategy._connected = {"a", "b2"}
    _, metrics = strategy.aggregate_fit(3, [_from("a", 0, s[0]), _from("b2", 1, s[1])], [])
    assert metrics == {"accepted": 2, "rejected": 0}


def test_too_few_valid_uploads_keep_the_previous_global_state(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)  # min_fit_fraction 1.0: every sampled client must succeed
    strategy._fit_sent = 2
    _, _, s0 = _client_stats(0)
    _, _, s1 = _client_stats(1)
    strategy.aggregate_fit(1, [_result(0, encode(Payload(s0))), _result(1, encode(Payload(s1)))], [])
    before = strategy.global_payload
    bad = encode(Payload(s1))
    variances = layout(bad, feature_dim=P)["second"]
    variances[:] = -np.abs(variances) - 1
    strategy.aggregate_fit(2, [_result(0, encode(Payload(s0))), _result(1, bad)], [])
    assert strategy.global_payload is before


def test_wrong_covariance_kind_is_rejected(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_fit_fraction=0.1)
    strategy._fit_sent = 2
    z, y, s = _client_stats(0)
    full = class_statistics(z, y, full=True)
    _, metrics = strategy.aggregate_fit(1, [_result(0, encode(Payload(s))), _result(1, encode(Payload(full)))], [])
    assert metrics == {"accepted": 1, "rejected": 1}


def test_shared_vtc_is_averaged_by_sample_count(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, vtc_shapes=[(2,)])
    strategy._fit_sent = 2
    _, _, s = _client_stats(0)
    results = [
        _result(0, encode(Payload(s, [np.array([0.0, 0.0], np.float32)])), n=10),
        _result(1, encode(Payload(s, [np.array([4.0, 8.0], np.float32)])), n=30),
    ]
    strategy.aggregate_fit(1, results, [])
    np.testing.assert_allclose(strategy.global_payload.extra[0], [3.0, 6.0])
    # an upload without the VTC is malformed when the VTC is shared
    _, metrics = strategy.aggregate_fit(2, [_result(0, encode(Payload(s)))], [])
    assert metrics["rejected"] == 1


def test_results_file_after_evaluation(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_fit_fraction=0.1)
    strategy._fit_sent = 1
    _, _, s = _client_stats(0)
    strategy.aggregate_fit(3, [_result(0, encode(Payload(s)))], [])
    evals = [
        (None, SimpleNamespace(loss=1.0, metrics={"cid": c, "arch": a, "global_accuracy": g, "local_accuracy": 0.9}))
        for c, a, g in ((0, "cnn_s", 0.5), (1, "cnn_m", 0.7))
    ]
    strategy.aggregate_evaluate(3, evals, [])  # the last round: writes ``final``
    results = json.loads((tmp_path / "results.json").read_text())
    final = results["final"]
    assert final["global_accuracy"] == pytest.approx(0.6)
    assert final["global_accuracy_std"] == pytest.approx(0.1)
    assert final["per_arch"]["cnn_m"]["global_accuracy"] == pytest.approx(0.7)
    assert [c["cid"] for c in final["clients"]] == [0, 1]
    assert (tmp_path / "accuracy.png").exists()


def test_max_client_share_bounds_a_client_that_claims_huge_counts(tmp_path: Path) -> None:
    """One client claims 9,000 samples of class 0 with a far-off mean: capped, it moves the pool
    by at most its share; uncapped, it drags the pooled mean to itself."""
    honest = [class_statistics(np.random.default_rng(s).normal(size=(30, P)), np.zeros(30, int)) for s in range(4)]
    liar = class_statistics(np.full((5, P), 100.0), np.zeros(5, int))
    liar = type(liar)(liar.classes, np.array([9000.0]), liar.means, liar.second)
    uploads = [_result(i, encode(Payload(s))) for i, s in enumerate([*honest, liar])]

    def pooled_mean(**kwargs) -> np.ndarray:
        strategy = _strategy(tmp_path, min_fit_fraction=0.1, **kwargs)
        strategy._fit_sent = 5
        parameters, _ = strategy.aggregate_fit(1, uploads, [])
        return decode(parameters_to_ndarrays(parameters), num_classes=C, feature_dim=P).stats.means[0]

    honest_mean = pool_statistics(honest).means[0]
    assert np.all(pooled_mean() > 95)  # uncapped: the liar's 9,000 dominates
    capped = pooled_mean(max_client_share=0.25)
    # the liar holds at most a quarter of the weight: the shift is at most 0.25 * (100 - honest)
    assert np.all(np.abs(capped - honest_mean) <= 0.25 * np.abs(100 - honest_mean) + 1e-6)
    assert np.all(capped > honest_mean + 1)  # but it is still pooled, not dropped
