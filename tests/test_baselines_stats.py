"""The statistics-sharing baselines: FedProto, FedTGP and CCVR.

Fast tests drive the strategies with hand-built client results (as ``test_strategy.py`` does) and
check the pure functions; a slow one drives a CCVR client directly. Every baseline's two-round
Flower simulation is in ``test_simulation.py``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedvtc.algorithms.ccvr import CCVRClient, CCVRStrategy, virtual_features
from fedvtc.algorithms.fedproto import FedProtoStrategy
from fedvtc.algorithms.fedtgp import FedTGPStrategy, adaptive_margin
from fedvtc.config import build_settings
from fedvtc.data import ImageSet
from fedvtc.losses import prototype_loss
from fedvtc.payload import Payload, decode, encode
from fedvtc.results import ResultsRecorder
from fedvtc.stats import class_statistics
from fedvtc.training import calibrate_head, train_local
from fedvtc.zoo import create_model
from helpers import assert_rejected, compose_config

C, P = 10, 4
OK = Status(code=Code.OK, message="")
CENTRES = 3.0 * np.random.default_rng(123).normal(size=(C, P))  # one per class, well apart


# ---- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread, as every client runs (simulation.threads_per_client): tiny models only
    lose time to thread synchronization, badly so when other processes keep the cores busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



def _strategy(cls, tmp_path: Path, **kwargs):
    recorder = ResultsRecorder(tmp_path, meta={"algorithm": cls.__name__}, clients=[], num_rounds=3)
    strategy = cls(
        num_rounds=3, num_clients=5, num_classes=C, feature_dim=P, recorder=recorder,
        max_count=10_000, min_fit_fraction=0.1, **kwargs,
    )
    strategy._fit_sent = 5
    return strategy


def _features(seed: int, classes: tuple[int, ...], n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``classes`` around class-dependent centres, so classes are separable."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n)
    z = rng.normal(size=(n, P)) * 0.3 + CENTRES[y] + seed * 0.1
    return z, y


def _result(cid: int, arrays: list[np.ndarray], n: int = 30):
    proxy = SimpleNamespace(cid=f"node-{cid}")
    return proxy, FitRes(OK, ndarrays_to_parameters(arrays), n, {"cid": cid, "arch": "cnn_s", "seconds": 1.0})


def _download(parameters) -> Payload:
    return decode(parameters_to_ndarrays(parameters), num_classes=C, feature_dim=P)


CLIENT_CLASSES = ((0, 2), (2, 5), (0, 5, 7))


# ---- the prototype loss -------------------------------------------------------------------------


def test_prototype_loss_is_zero_at_the_prototypes_and_ignores_classes_without_one() -> None:
    prototypes = torch.tensor([[1.0, 2.0], [0.0, 0.0], [-1.0, 3.0]])
    present = torch.tensor([True, False, True])
    labels = torch.tensor([0, 2, 1])
    at_prototypes = torch.tensor([[1.0, 2.0], [-1.0, 3.0], [50.0, -50.0]])  # class 1 has none
    assert float(prototype_loss(at_prototypes, labels, prototypes, present)) == 0.0

    features = torch.tensor([[2.0, 2.0], [-1.0, 5.0], [50.0, -50.0]], requires_grad=True)
    loss = prototype_loss(features, labels, prototypes, present)
    # per-dimension mean of the squared difference, summed over kept rows, over the batch of 3
    assert float(loss.detach()) == pytest.approx(((1.0 + 0.0) / 2 + (0.0 + 4.0) / 2) / 3)
    # equals nn.MSELoss with the rows of classes without a prototype set to the features themselves
    target = torch.stack([prototypes[0], prototypes[2], features[2].detach()])
    assert float(loss.detach()) == pytest.approx(float(torch.nn.functional.mse_loss(features.detach(), target)))
    loss.backward()
    assert torch.all(features.grad[2] == 0)
    nobody = torch.zeros(3, dtype=torch.bool)
    assert float(prototype_loss(features, labels, prototypes, nobody).detach()) == 0.0


def test_train_local_adds_the_extra_loss_to_every_step() -> None:
    torch.manual_seed(0)
    model = create_model("cnn_s", num_classes=C, feature_dim=P, in_channels=1, image_size=28)
    data = ImageSet(torch.randn(12, 1, 28, 28), torch.randint(0, C, (12,)))
    calls: list[tuple[int, int]] = []

    def extra(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append((features.shape[1], len(labels)))
        return features.pow(2).mean()

    train_local(
        model, data, torch.optim.SGD(model.parameters(), lr=0.01),
        epochs=1, batch_size=5, generator=torch.Generator().manual_seed(0), extra_loss=extra,
    )
    assert calls == [(P, 5), (P, 5), (P, 2)]


# ---- FedProto -------------------------------------------------------------------------------------


def test_fedproto_sends_the_count_weighted_mean_prototype_of_every_class(tmp_path: Path) -> None:
    strategy = _strategy(FedProtoStrategy, tmp_path)
    parts = [_features(i, classes) for i, classes in enumerate(CLIENT_CLASSES)]
    uploads = [class_statistics(z, y, means_only=True) for z, y in parts]
    parameters, metrics = strategy.aggregate_fit(1, [_result(i, encode(Payload(s))) for i, s in enumerate(uploads)], [])
    assert metrics == {"accepted": 3, "rejected": 0}
    pooled = _download(parameters).stats
    assert pooled.means_only
    z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    expected = class_statistics(z, y, means_only=True)  # the mean over all samples of the class
    np.testing.assert_array_equal(pooled.classes, [0, 2, 5, 7])
    np.testing.assert_allclose(pooled.means, expected.means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled.counts, expected.counts)
    # spelled out for class 2, held by clients 0 and 1
    n0, n1 = (uploads[i].counts[list(uploads[i].classes).index(2)] for i in (0, 1))
    m0, m1 = (uploads[i].means[list(uploads[i].classes).index(2)] for i in (0, 1))
    np.testing.assert_allclose(pooled.means[1], (n0 * m0 + n1 * m1) / (n0 + n1), rtol=1e-5)
    assert strategy.recorder.rounds[-1]["bytes_up"] > 0


@pytest.mark.parametrize("strategy_cls", [FedProtoStrategy, FedTGPStrategy])
def test_prototype_strategies_reject_uploads_of_the_wrong_kind(strategy_cls, tmp_path: Path) -> None:
    kwargs = {"server_epochs": 2} if strategy_cls is FedTGPStrategy else {}
    strategy = _strategy(strategy_cls, tmp_path, **kwargs)
    z, y = _features(0, (0, 2))
    good = encode(Payload(class_statistics(z, y, means_only=True)))
    diag = encode(Payload(class_statistics(z, y)))
    empty = encode(Payload())
    with_extra = encode(Payload(class_statistics(z, y, means_only=True), [np.zeros(3, np.float32)]))
    results = [_result(0, good), _result(1, diag), _result(2, empty), _result(3, with_extra)]
    _, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics == {"accepted": 1, "rejected": 3}
    reasons = {r["cid"]: r["reason"] for r in strategy.recorder.rounds[-1]["rejected"]}
    assert "means only" in reasons[1] and "prototypes" in reasons[2] and "extra" in reasons[3]


# ---- FedTGP ---------------------------------------------------------------------------------------


def test_adaptive_margin_is_the_largest_nearest_other_class_gap_capped() -> None:
    # client prototypes of classes 0, 1, 2; class 0's centre is the mean of its two rows, (0, 0)
    prototypes = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 10.0]])
    labels = torch.tensor([0, 0, 1, 2])
    # nearest other class: 0 -> 1 at 3, 1 -> 0 at 3, 2 -> 0 at 10; the largest is 10
    assert adaptive_margin(prototypes, labels, threshold=100.0) == pytest.approx(10.0)
    assert adaptive_margin(prototypes, labels, threshold=4.0) == pytest.approx(4.0)
    assert adaptive_margin(prototypes[:2], labels[:2], threshold=7.0) == 7.0  # one class only


def _tgp_round(tmp_path: Path, **kwargs) -> tuple[FedTGPStrategy, Payload, list]:
    """One FedTGP server round on the hand-built prototypes of ``CLIENT_CLASSES``."""
    strategy = _strategy(FedTGPStrategy, tmp_path, **kwargs)
    uploads = [class_statistics(*_features(i, c), means_only=True) for i, c in enumerate(CLIENT_CLASSES)]
    parameters, metrics = strategy.aggregate_fit(1, [_result(i, encode(Payload(s))) for i, s in enumerate(uploads)], [])
    assert metrics["accepted"] == 3
    return strategy, _download(parameters), uploads


def _own_class_distance(uploads: list, classes: np.ndarray, prototypes: np.ndarray) -> float:
    """Mean distance of every uploaded prototype to the global prototype of its class."""
    row = {int(c): i for i, c in enumerate(classes)}
    return float(np.mean([np.linalg.norm(m - prototypes[row[int(c)]]) for s in uploads for c, m in zip(s.classes, s.means)]))


def test_fedtgp_server_training_lowers_its_loss_and_sends_one_prototype_per_seen_class(tmp_path: Path) -> None:
    untrained = _strategy(FedTGPStrategy, tmp_path / "untrained")  # same seed: the starting network
    # default optimizer and learning rate; a small batch gives ~400 steps in well under a second
    strategy, payload, uploads = _tgp_round(tmp_path / "trained", server_epochs=100, server_batch_size=2)
    history = strategy.loss_history
    assert len(history) == 100 and history[-1] < 0.8 * history[0]
    assert all(later < earlier for earlier, later in zip(history[::10], history[10::10]))
    assert payload.stats.means_only and payload.stats.means.shape == (4, P)
    np.testing.assert_array_equal(payload.stats.classes, [0, 2, 5, 7])
    with torch.no_grad():
        start = untrained.prototype_net(torch.as_tensor(payload.stats.classes)).double().numpy()
    before = _own_class_distance(uploads, payload.stats.classes, start)
    after = _own_class_distance(uploads, payload.stats.classes, payload.stats.means)
    assert after < 0.5 * before


def test_fedtgp_server_is_seeded(tmp_path: Path) -> None:
    _, first, _ = _tgp_round(tmp_path / "a", seed=0, server_epochs=3)
    _, again, _ = _tgp_round(tmp_path / "b", seed=0, server_epochs=3)
    _, other, _ = _tgp_round(tmp_path / "c", seed=1, server_epochs=3)
    np.testing.assert_array_equal(first.stats.means, again.stats.means)
    assert not np.allclose(first.stats.means, other.stats.means)


def test_fedtgp_keeps_classes_seen_in_earlier_rounds(tmp_path: Path) -> None:
    strategy = _strategy(FedTGPStrategy, tmp_path, server_epochs=2)
    first = class_statistics(*_features(0, (0, 2)), means_only=True)
    second = class_statistics(*_features(1, (5,)), means_only=True)
    strategy.aggregate_fit(1, [_result(0, encode(Payload(first)))], [])
    parameters, _ = strategy.aggregate_fit(2, [_result(1, encode(Payload(second)))], [])
    np.testing.assert_array_equal(_download(parameters).stats.classes, [0, 2, 5])


# ---- CCVR -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_ccvr_pools_gaussians_exactly_and_rejects_other_kinds(covariance: str, tmp_path: Path) -> None:
    strategy = _strategy(CCVRStrategy, tmp_path, covariance=covariance)
    full = covariance == "full"
    parts = [_features(i, classes) for i, classes in enumerate(CLIENT_CLASSES)]
    results = [_result(i, encode(Payload(class_statistics(z, y, full=full)))) for i, (z, y) in enumerate(parts)]
    z0, y0 = parts[0]
    results += [
        _result(3, encode(Payload(class_statistics(z0, y0, means_only=True)))),
        _result(4, encode(Payload(class_statistics(z0, y0, full=not full)))),
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics == {"accepted": 3, "rejected": 2}
    pooled = _download(parameters).stats
    expected = class_statistics(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), full=full)
    assert pooled.full == full
    np.testing.assert_array_equal(pooled.classes, expected.classes)
    np.testing.assert_allclose(pooled.means, expected.means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled.second, expected.second, rtol=1e-4, atol=1e-5)


def test_virtual_features_follow_the_pooled_gaussians_and_calibrate_a_head() -> None:
    z, y = _features(0, (1, 3, 6), n=600)
    stats = class_statistics(z, y)
    features, labels = virtual_features(
        stats, C, per_class=2000, generator=torch.Generator().manual_seed(0), variance_floor=1e-4, shrinkage=0.1,
    )
    assert features.shape == (6000, P) and torch.equal(torch.unique(labels), torch.tensor([1, 3, 6]))
    drawn = class_statistics(features, labels)
    np.testing.assert_allclose(drawn.means, stats.means, atol=0.05)
    np.testing.assert_allclose(drawn.second, stats.second, rtol=0.15)

    torch.manual_seed(0)
    head = torch.nn.Linear(P, C)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    first = calibrate_head(head, features, labels, optimizer, epochs=1, batch_size=64, generator=generator)
    last = calibrate_head(head, features, labels, optimizer, epochs=2, batch_size=64, generator=generator)
    assert last < first
    with torch.no_grad():
        accuracy = float((head(torch.as_tensor(z, dtype=torch.float32)).argmax(1) == torch.as_tensor(y)).float().mean())
    assert accuracy > 0.95


# ---- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm, override",
    [
        ("fedproto", "algorithm.proto_weight=-1"),
        ("fedtgp", "algorithm.proto_weight=-0.5"),
        ("fedtgp", "algorithm.server_optimizer=rmsprop"),
        ("fedtgp", "algorithm.server_epochs=0"),
        ("fedtgp", "algorithm.server_lr=0"),
        ("fedtgp", "algorithm.server_batch_size=0"),
        ("fedtgp", "algorithm.margin_threshold=-1"),
        ("fedtgp", "algorithm.hidden_dim=0"),
        ("ccvr", "algorithm.covariance=low_rank"),
        ("ccvr", "algorithm.num_virtual_per_class=0"),
        ("ccvr", "algorithm.calibration_epochs=-1"),
        ("ccvr", "algorithm.variance_floor=0"),
        ("ccvr", "algorithm.shrinkage=1.5"),
    ],
)
def test_bad_settings_are_config_errors(algorithm: str, override: str, tmp_path: Path) -> None:
    assert_rejected([f"algorithm={algorithm}"], override, tmp_path)


# ---- clients (slow) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ccvr_calibration_moves_the_head_only(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    cfg = compose_config(["experiment=debug", "algorithm=ccvr", "train.local_epochs=0"])
    settings = build_settings(cfg, output_dir=tmp_path)
    z, y = _features(0, (0, 1, 2, 3), n=200)
    z = np.concatenate([z, np.zeros((200, settings.feature_dim - P))], axis=1)
    pooled = encode(Payload(class_statistics(z, y)))
    client = CCVRClient(0, settings)
    before = {k: v.clone() for k, v in client.model.state_dict().items()}
    arrays, n, metrics = client.fit(pooled, {"server_round": 2, "num_rounds": 2})
    after = client.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"head.weight", "head.bias"}
    assert metrics["time_calibration"] > 0
    upload = decode(arrays, num_classes=C, feature_dim=settings.feature_dim).stats
    assert not upload.means_only and not upload.full and upload.counts.sum() == n
