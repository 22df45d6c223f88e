"""The baselines that share model weights: FedGen (a server-trained feature generator) and FedType
(a FedAvg'd proxy taught by mutual learning). Strategies run on hand-built uploads; every baseline's
two-round Flower simulation is in ``test_simulation.py``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedvtc.algorithms.fedgen import (
    FedGenStrategy,
    FeatureGenerator,
    GeneratedFeatureTerm,
    download_shapes,
    label_frequencies,
    sample_labels,
    teacher_weights,
)
from fedvtc.algorithms.fedtype import FedTypeStrategy
from fedvtc.losses import (
    conformal_threshold,
    ensemble_cross_entropy,
    mutual_learning_loss,
    prediction_sets,
    set_consensus,
    trusted_samples,
)
from fedvtc.payload import Payload, decode, encode
from fedvtc.results import ResultsRecorder
from fedvtc.stats import class_statistics
from fedvtc.zoo import create_model
from helpers import assert_rejected

C, P = 4, 6
OK = Status(code=Code.OK, message="")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than several fighting over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _result(cid: int, arrays: list[np.ndarray], n: int):
    proxy = SimpleNamespace(cid=f"node-{cid}")  # the strategy only names the node in its log
    return proxy, FitRes(OK, ndarrays_to_parameters(arrays), n, {"cid": cid, "arch": "cnn_s", "seconds": 1.0})


def _recorder(tmp_path: Path) -> ResultsRecorder:
    return ResultsRecorder(tmp_path, meta={}, clients=[], num_rounds=3)


# ---- FedGen ---------------------------------------------------------------------------------------


def _fedgen_strategy(tmp_path: Path, **kwargs) -> FedGenStrategy:
    torch.manual_seed(0)
    strategy = FedGenStrategy(
        generator=FeatureGenerator(noise_dim=8, num_classes=C, hidden_dim=32, feature_dim=P),
        num_rounds=3, num_clients=5, num_classes=C, feature_dim=P, recorder=_recorder(tmp_path),
        max_count=10_000, min_fit_fraction=0.1, server_epochs=150, server_lr=0.01,
        server_batch_size=16, **kwargs,
    )
    strategy._fit_sent = 5
    return strategy


def _head_upload(seed: int, counts: list[float]) -> list[np.ndarray]:
    """A head whose class c points along feature axis c (plus noise), and the client's label counts."""
    rng = np.random.default_rng(seed)
    weight = 3.0 * np.eye(C, P) + 0.1 * rng.normal(size=(C, P))
    bias = 0.1 * rng.normal(size=C)
    return [weight.astype(np.float32), bias.astype(np.float32), np.asarray(counts, np.float32)]


CLIENT_COUNTS = ([30, 10, 0, 0], [0, 20, 20, 0], [5, 0, 5, 40])


def test_generator_output_shape_and_labels_follow_the_requested_frequencies() -> None:
    torch.manual_seed(0)
    generator = FeatureGenerator(noise_dim=8, num_classes=C, hidden_dim=16, feature_dim=P)
    probs = label_frequencies(np.array([60.0, 0.0, 30.0, 10.0]))
    rng = torch.Generator().manual_seed(1)
    labels = sample_labels(probs, 4000, rng)
    features, noise = generator.sample(labels, rng)
    assert features.shape == (4000, P) and noise.shape == (4000, 8)
    assert float(noise.min()) >= 0 and float(noise.max()) < 1  # U[0, 1) noise, as both reference codes
    freq = torch.bincount(labels, minlength=C).double() / 4000
    np.testing.assert_allclose(freq.numpy(), [0.6, 0.0, 0.3, 0.1], atol=0.03)


def test_teacher_weights_and_both_ensemble_forms() -> None:
    counts = np.array(CLIENT_COUNTS, dtype=np.float64)
    w = teacher_weights(counts, [40, 40, 50], "fedgen")
    np.testing.assert_allclose(w.sum(dim=0).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[:, 0].numpy(), [30 / 35, 0, 5 / 35], rtol=1e-6)
    np.testing.assert_allclose(teacher_weights(counts, [40, 40, 20], "htfllib")[:, 2].numpy(), [0.4, 0.4, 0.2])
    # one client: both forms are the plain cross-entropy
    logits, y = torch.randn(1, 5, C), torch.tensor([0, 1, 2, 3, 0])
    plain = torch.nn.functional.cross_entropy(logits[0], y)
    for combine in ("loss", "logits"):
        torch.testing.assert_close(ensemble_cross_entropy(logits, y, torch.ones(1, 5), combine=combine), plain)


def test_fedgen_server_training_lowers_its_loss_and_sends_generator_counts_and_mean_head(tmp_path: Path) -> None:
    strategy = _fedgen_strategy(tmp_path)
    uploads = [_head_upload(i, counts) for i, counts in enumerate(CLIENT_COUNTS)]
    sizes = [40, 40, 50]
    parameters, metrics = strategy.aggregate_fit(1, [_result(i, encode(Payload(extra=u)), n) for i, (u, n) in enumerate(zip(uploads, sizes))], [])
    assert metrics == {"accepted": 3, "rejected": 0}
    history = strategy.loss_history
    assert len(history) == 150 and np.mean(history[-20:]) < 0.5 * np.mean(history[:20])

    shapes = download_shapes(strategy.generator, C, P, share_head=True)
    down = decode(parameters_to_ndarrays(parameters), num_classes=C, feature_dim=P, extra_shapes=shapes).extra
    n_gen = len(shapes) - 3
    np.testing.assert_array_equal(down[n_gen], np.sum(CLIENT_COUNTS, axis=0))
    expected_head = sum(n * u[0] for n, u in zip(sizes, uploads)) / sum(sizes)
    np.testing.assert_allclose(down[n_gen + 1], expected_head, rtol=1e-5, atol=1e-6)

    # The trained generator makes features the heads' ensemble calls by their label.
    strategy.generator.eval()
    labels = torch.tensor([0, 1, 2, 3]).repeat(50)
    with torch.no_grad():
        features, _ = strategy.generator.sample(labels, torch.Generator().manual_seed(0))
    mean_head = torch.as_tensor(expected_head)
    accuracy = float(((features @ mean_head.T).argmax(dim=1) == labels).float().mean())
    assert accuracy > 0.9


def test_fedgen_without_a_shared_head_sends_no_head(tmp_path: Path) -> None:
    strategy = _fedgen_strategy(tmp_path, share_head=False, ensemble="htfllib", diversity_weight=1.0)
    strategy.server_epochs = 5
    parameters, _ = strategy.aggregate_fit(1, [_result(0, encode(Payload(extra=_head_upload(0, [1, 2, 3, 4]))), 10)], [])
    shapes = download_shapes(strategy.generator, C, P, share_head=False)
    down = decode(parameters_to_ndarrays(parameters), num_classes=C, feature_dim=P, extra_shapes=shapes).extra
    assert len(down) == len(shapes) and all(np.isfinite(a).all() for a in down)


def test_fedgen_rejects_malformed_uploads(tmp_path: Path) -> None:
    strategy = _fedgen_strategy(tmp_path)
    strategy.server_epochs = 3
    good = _head_upload(0, [5, 5, 0, 0])
    wrong_shape = [np.zeros((C, P + 1), np.float32), *good[1:]]
    nan_head = [np.full_like(good[0], np.nan), *good[1:]]
    negative = [*good[:2], np.array([5, -1, 0, 0], np.float32)]
    fractional = [*good[:2], np.array([0.5, 1, 0, 0], np.float32)]
    with_stats = encode(Payload(class_statistics(np.zeros((2, P)), np.array([0, 1])), extra=good))
    results = [_result(0, encode(Payload(extra=good)), 10), _result(1, encode(Payload(extra=wrong_shape)), 10),
               _result(2, encode(Payload(extra=nan_head)), 10), _result(3, encode(Payload(extra=negative)), 10),
               _result(4, encode(Payload(extra=fractional)), 10)]
    _, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics == {"accepted": 1, "rejected": 4}
    reasons = {r["cid"]: r["reason"] for r in strategy.recorder.rounds[-1]["rejected"]}
    assert "shape" in reasons[1] and "finite" in reasons[2] and "non-negative" in reasons[3]
    strategy._fit_sent = 1
    _, metrics = strategy.aggregate_fit(2, [_result(0, with_stats, 10)], [])
    assert metrics == {"accepted": 0, "rejected": 1}


def test_generated_feature_term_trains_the_head_only() -> None:
    torch.manual_seed(0)
    model = create_model("cnn_s", num_classes=C, feature_dim=P, in_channels=1, image_size=28)
    generator = FeatureGenerator(noise_dim=8, num_classes=C, hidden_dim=16, feature_dim=P).eval()
    term = GeneratedFeatureTerm(generator, model.head, label_frequencies(np.ones(C)), 2.0, 8,
                                torch.Generator().manual_seed(0))
    loss = term(torch.zeros(3, P), torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert loss > 0
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.extractor.parameters())
    assert all(p.grad is None for p in generator.parameters())


# ---- FedType --------------------------------------------------------------------------------------


def test_fedtype_averages_proxies_weighted_by_samples(tmp_path: Path) -> None:
    shapes = [(2, 3), (4,)]
    strategy = FedTypeStrategy(
        proxy_shapes=shapes, num_rounds=3, num_clients=5, num_classes=C, feature_dim=P,
        recorder=_recorder(tmp_path), max_count=10_000, min_fit_fraction=0.1,
    )
    strategy._fit_sent = 4
    rng = np.random.default_rng(0)
    proxies = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)]
    sizes = [10, 30, 60]
    results = [_result(i, encode(Payload(extra=p)), n) for i, (p, n) in enumerate(zip(proxies, sizes))]
    results.append(_result(3, encode(Payload(extra=[np.zeros((3, 2), np.float32), np.zeros(4, np.float32)])), 50))
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics == {"accepted": 3, "rejected": 1}
    down = decode(parameters_to_ndarrays(parameters), num_classes=C, feature_dim=P, extra_shapes=shapes).extra
    for i in range(len(shapes)):
        expected = sum(n * p[i] for n, p in zip(sizes, proxies)) / sum(sizes)
        np.testing.assert_allclose(down[i], expected, rtol=1e-5, atol=1e-6)


def test_mutual_learning_loss_is_zero_when_predictions_agree() -> None:
    logits = torch.randn(6, C)
    for threshold in (None, 0.0, 0.5):
        assert float(mutual_learning_loss(logits, logits.clone(), temperature=2.0, threshold=threshold)) == pytest.approx(0, abs=1e-6)
    assert float(mutual_learning_loss(torch.randn(6, C), logits)) > 0


def test_mutual_learning_loss_masks_samples_the_teacher_is_unsure_of() -> None:
    teacher = torch.tensor([[8.0, 0.0, 0.0, 0.0],   # sure: set {0} at threshold 0.5
                            [0.0, 0.0, 0.0, 0.0],   # uniform: empty set
                            [5.0, 5.0, 0.0, 0.0]])  # hesitates between 0 and 1: empty set at 0.5
    student = torch.zeros(3, C, requires_grad=True)
    loss = mutual_learning_loss(student, teacher, threshold=0.5)
    full = mutual_learning_loss(student[:1], teacher[:1])
    torch.testing.assert_close(loss, full / 3)  # untrusted samples add 0 but count in the mean
    loss.backward()
    assert student.grad[0].abs().sum() > 0 and float(student.grad[1:].abs().sum()) == 0.0
    # a lower threshold makes sample 2's set {0, 1}: trusted once two-class sets are allowed
    probs = torch.softmax(teacher, dim=1)
    assert trusted_samples(probs, 0.3, max_set_size=1).tolist() == [True, False, False]
    assert trusted_samples(probs, 0.3, max_set_size=2).tolist() == [True, False, True]


def test_conformal_threshold_covers_the_true_class_and_consensus_of_sets() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, C, (500,))
    probs = torch.softmax(torch.randn(500, C) + 2.5 * torch.nn.functional.one_hot(labels, C), dim=1)
    t = conformal_threshold(probs, labels, alpha=0.1)
    covered = prediction_sets(probs, t)[torch.arange(500), labels].float().mean()
    assert 0.9 <= float(covered) <= 0.93  # split-conformal: at least 1 - alpha, barely more
    sets = prediction_sets(probs, t)
    assert float(set_consensus(sets, sets)) == pytest.approx(1.0)
    a = torch.tensor([[True, False, False, False], [True, True, False, False]])
    b = torch.tensor([[False, True, False, False], [True, False, False, False]])
    # sample 0: disjoint -> 0; sample 1: the student's set is larger -> |a ∩ b| / |b| = 1
    assert float(set_consensus(a, b)) == pytest.approx(0.5)
    empty = torch.zeros(1, C, dtype=torch.bool)
    assert float(set_consensus(empty, empty)) == 1.0 and float(set_consensus(empty, a[:1])) == 0.0


# ---- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm, override",
    [
        ("fedgen", "algorithm.ensemble=mean"),
        ("fedgen", "algorithm.noise_dim=0"),
        ("fedgen", "algorithm.server_batch_size=1"),
        ("fedgen", "algorithm.generated_weight=-1"),
        ("fedgen", "algorithm.generated_weight_decay=0"),
        ("fedtype", "algorithm.proxy_model=vgg99"),
        ("fedtype", "algorithm.selection=entropy"),
        ("fedtype", "algorithm.conformal_alpha=1.0"),
        ("fedtype", "algorithm.max_set_size=0"),
        ("fedtype", "algorithm.temperature=0"),
    ],
)
def test_bad_settings_are_config_errors(algorithm: str, override: str, tmp_path: Path) -> None:
    assert_rejected([f"algorithm={algorithm}"], override, tmp_path)
