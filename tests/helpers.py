"""Helpers shared by the tests that compose configs or run simulations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed Hydra config for ``overrides``, as ``run_simulation.py`` would see it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def run_cli(args: list[str], data_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``run_simulation.py`` in a subprocess with the test data root."""
    env = dict(os.environ, FEDVTC_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(REPO / "run_simulation.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def run_rounds_in_process(settings, num_rounds: int = 2) -> list[dict]:
    """Run an algorithm's strategy and clients round by round without the Flower runtime.

    The strategy talks to ``DirectProxy`` objects, Flower ``ClientProxy``s that call a freshly built
    client (as Flower builds one per message) in this process instead of sending a message: the same
    strategy and client code, the same payload encoding, no Ray. Returns the recorder's rounds.
    """
    from flwr.common import Code, EvaluateRes, FitRes, Status
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    from fedvtc.algorithms import get_algorithm
    from fedvtc.apps import build_strategy

    client_cls = get_algorithm(settings.algorithm_name).client
    ok = Status(Code.OK, "")

    class DirectProxy(ClientProxy):
        def fit(self, ins, timeout, group_id):
            from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

            arrays, n, metrics = client_cls(int(self.cid), settings).fit(
                parameters_to_ndarrays(ins.parameters), ins.config
            )
            return FitRes(ok, ndarrays_to_parameters(arrays), n, metrics)

        def evaluate(self, ins, timeout, group_id):
            loss, n, metrics = client_cls(int(self.cid), settings).evaluate([], ins.config)
            return EvaluateRes(ok, loss, n, metrics)

        def get_properties(self, ins, timeout, group_id):
            raise NotImplementedError

        def get_parameters(self, ins, timeout, group_id):
            raise NotImplementedError

        def reconnect(self, ins, timeout, group_id):
            raise NotImplementedError

    manager = SimpleClientManager()
    for cid in range(settings.num_clients):
        manager.register(DirectProxy(str(cid)))
    strategy = build_strategy(settings)
    parameters = strategy.initialize_parameters(manager)
    for rnd in range(1, num_rounds + 1):
        fits = strategy.configure_fit(rnd, parameters, manager)
        results = sorted(((p, p.fit(ins, None, rnd)) for p, ins in fits), key=lambda r: int(r[0].cid))
        parameters, _ = strategy.aggregate_fit(rnd, results, [])
        evals = strategy.configure_evaluate(rnd, parameters, manager)
        strategy.aggregate_evaluate(rnd, [(p, p.evaluate(ins, None, rnd)) for p, ins in evals], [])
    return strategy.recorder.rounds
