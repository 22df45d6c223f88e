"""``LazyOptimizer``: built on first use, it trains exactly as an optimizer built eagerly."""

from __future__ import annotations

import copy

import pytest
import torch

from fedvtc.client import LazyOptimizer, make_optimizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _steps(model, optimizer, n: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(16, 4, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_resumed_lazily_it_trains_as_an_eager_optimizer(name: str) -> None:
    build = dict(name=name, lr=0.05, momentum=0.9, weight_decay=1e-4)
    model = _model()
    eager = make_optimizer(model.parameters(), **build)
    _steps(model, eager, 3)
    saved_model, saved_optimizer = copy.deepcopy((model.state_dict(), eager.state_dict()))
    _steps(model, eager, 2)  # the eager run goes on

    resumed = _model()
    lazy = LazyOptimizer(lambda: make_optimizer(resumed.parameters(), **build))
    resumed.load_state_dict(saved_model)
    lazy.load_state_dict(saved_optimizer)
    assert not lazy.built
    assert lazy.state_dict() is saved_optimizer  # saved again unbuilt: the loaded state, as is
    _steps(resumed, lazy.get(), 2)
    assert lazy.built
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_new_one_builds_when_its_state_is_asked() -> None:
    model = _model()
    lazy = LazyOptimizer(lambda: torch.optim.SGD(model.parameters(), lr=0.1))
    assert lazy.state_dict()["state"] == {} and lazy.built
    lazy.load_state_dict(lazy.state_dict())  # loading into a built one loads it there
    assert lazy.get().param_groups[0]["lr"] == 0.1
