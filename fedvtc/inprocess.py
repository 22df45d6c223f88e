"""Run an algorithm's strategy and clients in this process, without the Flower runtime.

The strategy talks to ``DirectProxy`` objects: Flower ``ClientProxy``s that build a fresh client (as
Flower builds one per message) and call it directly instead of sending a message. Same strategy and
client code, same payload encoding through Flower ``Parameters``; no Ray, no gRPC, one client at a
time. Used by the tests (fast smoke runs) and by ``benchmarks/bench_round.py`` (the baseline that
Flower's overhead is measured against).
"""

from __future__ import annotations

from typing import Any

from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedvtc.algorithms import get_algorithm
from fedvtc.apps import build_strategy
from fedvtc.settings import RunSettings
from fedvtc.state import clear_states

_OK = Status(Code.OK, "")


class DirectProxy(ClientProxy):
    """A ``ClientProxy`` that runs client ``cid`` of ``settings`` in this process."""

    def __init__(self, cid: int, settings: RunSettings) -> None:
        super().__init__(str(cid))
        self.settings = settings
        self.client_cls = get_algorithm(settings.algorithm_name).client

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        client = self.client_cls(int(self.cid), self.settings)
        arrays, n, metrics = client.fit(parameters_to_ndarrays(ins.parameters), ins.config)
        return FitRes(_OK, ndarrays_to_parameters(arrays), n, metrics)

    def evaluate(self, ins: EvaluateIns, timeout: float | None, group_id: int | None) -> EvaluateRes:
        loss, n, metrics = self.client_cls(int(self.cid), self.settings).evaluate([], ins.config)
        return EvaluateRes(_OK, loss, n, metrics)

    def get_properties(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        raise NotImplementedError("not used by these strategies")

    def get_parameters(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        raise NotImplementedError("not used by these strategies")

    def reconnect(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
        raise NotImplementedError("not used by these strategies")


def run_in_process(settings: RunSettings, num_rounds: int | None = None) -> list[dict[str, Any]]:
    """Run ``num_rounds`` (default: the settings') rounds sequentially; return the recorded rounds.

    Writes the same results files as a simulation into ``settings.output_dir``. With
    ``settings.resume`` it runs only the rounds after that checkpoint's (``fedvtc.checkpoint``).
    """
    num_rounds = num_rounds or settings.num_rounds
    if not settings.resume:
        clear_states(settings.state_dir)  # a new run: no client may continue an earlier one
    manager = SimpleClientManager()
    for cid in range(settings.num_clients):
        manager.register(DirectProxy(cid, settings))
    strategy = build_strategy(settings)
    parameters = strategy.initialize_parameters(manager)
    for rnd in range(strategy.first_round, num_rounds + 1):
        fits = strategy.configure_fit(rnd, parameters, manager)
        results = [(proxy, proxy.fit(ins, None, rnd)) for proxy, ins in sorted(fits, key=lambda f: int(f[0].cid))]
        parameters, _ = strategy.aggregate_fit(rnd, results, [])
        evals = strategy.configure_evaluate(rnd, parameters, manager)
        strategy.aggregate_evaluate(rnd, [(p, p.evaluate(ins, None, rnd)) for p, ins in evals], [])
    return strategy.recorder.rounds
