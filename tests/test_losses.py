"""KL alignment and distribution matching."""

import pytest
import torch

from fedvtc.losses import alignment_loss, dm_loss, gaussian_kl_diag


def test_closed_form_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    p = 3
    mu_q, mu_p = torch.randn(1, p, generator=g, dtype=torch.float64), torch.randn(1, p, generator=g, dtype=torch.float64)
    var_q = torch.rand(1, p, generator=g, dtype=torch.float64) + 0.5
    var_p = torch.rand(1, p, generator=g, dtype=torch.float64) + 0.5
    closed = gaussian_kl_diag(mu_q, var_q, mu_p, var_p)[0]
    x = mu_q + var_q.sqrt() * torch.randn(400_000, p, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu_q, var_q.sqrt()).log_prob(x).sum(1)
    log_p = torch.distributions.Normal(mu_p, var_p.sqrt()).log_prob(x).sum(1)
    mc = (log_q - log_p).mean()
    assert abs(float(closed - mc)) < 0.02 * max(1.0, float(closed))
    assert float(gaussian_kl_diag(mu_q, var_q, mu_q, var_q)[0]) == pytest.approx(0.0, abs=1e-12)


def test_kl_reductions():
    a = torch.randn(4, 6)
    v = torch.rand(4, 6) + 0.1
    s = gaussian_kl_diag(a, v, torch.zeros(4, 6), torch.ones(4, 6), reduction="sum")
    m = gaussian_kl_diag(a, v, torch.zeros(4, 6), torch.ones(4, 6), reduction="mean")
    torch.testing.assert_close(s, m * 6)
    with pytest.raises(ValueError):
        gaussian_kl_diag(a, v, a, v, reduction="max")


def test_alignment_ignores_absent_classes_and_pulls_toward_means():
    means = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    var = torch.ones(2, 2)
    present = torch.tensor([True, False])
    feats = torch.tensor([[1.0, 1.0], [9.0, 9.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    loss = alignment_loss(feats, labels, means, var, var, present)
    loss.backward()
    assert feats.grad[1].abs().sum() == 0  # class 1 has no global statistics
    assert torch.all(feats.grad[0] > 0)  # gradient descent moves the sample toward c^0 = 0
    none = alignment_loss(feats, labels, means, var, var, torch.tensor([False, False]))
    assert float(none.detach()) == 0.0


def test_dm_loss_is_zero_when_statistics_match_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 4
    means = torch.stack([feats[labels == c].mean(0) for c in range(4)])
    stds = torch.stack([feats[labels == c].var(0, unbiased=False).sqrt() for c in range(4)])
    assert float(dm_loss(feats, labels, means, stds)) == pytest.approx(0.0, abs=1e-9)
    assert float(dm_loss(feats + 1.0, labels, means, stds)) == pytest.approx(1.0, rel=1e-6)
    assert float(dm_loss(feats * 2.0, labels, means * 2.0, stds)) > 0.1


def test_dm_loss_needs_two_samples_per_class():
    with pytest.raises(ValueError):
        dm_loss(torch.randn(3, 2), torch.tensor([0, 0, 1]), torch.zeros(2, 2), torch.ones(2, 2))
