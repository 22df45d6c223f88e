"""The server machinery every algorithm shares: a ``flwr.server.strategy.Strategy`` subclass.

``HeteroStrategy`` replaces parameter averaging with an exchange of payloads (``fedvtc.payload``):
each round it sends the current global payload to the sampled clients, decodes and validates what
comes back (a malformed upload is dropped with a logged reason, the others are used), lets the
algorithm combine the accepted uploads (``aggregate``), asks every client for its evaluation and
records the round (``fedvtc.results``). It counts the bytes of every payload it sends and receives.
An algorithm subclasses it and implements ``aggregate`` (and ``extra_upload_shapes`` if clients send
model weights).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedvtc.payload import Payload, PayloadError, decode, encode, payload_nbytes
from fedvtc.results import ResultsRecorder
from fedvtc.stats import cap_class_counts, cap_weights

log = logging.getLogger("fedvtc")


@dataclass(frozen=True)
class Upload:
    """One client's accepted upload."""

    cid: int
    payload: Payload
    num_examples: float  # the claimed sample count, or its capped value (max_client_share)
    metrics: dict[str, Scalar]
    array_bytes: int  # raw bytes of the uploaded arrays (the analytic size, without framing)


def parameters_nbytes(parameters: Parameters) -> int:
    """Bytes of the serialized arrays in a Flower ``Parameters`` message (what goes on the wire)."""
    return int(sum(len(t) for t in parameters.tensors))


class HeteroStrategy(Strategy):
    """Payload exchange instead of parameter averaging.

    Args:
        num_rounds: rounds in the run (the last one is always evaluated and closes the results).
        num_clients: clients in the federation.
        num_classes: C, to validate class ids in uploads.
        feature_dim: p, to validate statistic shapes in uploads.
        recorder: where the round figures go.
        max_count: largest plausible total sample count of one upload (the training-set size).
        fraction_fit: fraction of the clients sampled for training each round.
        min_fit_fraction: fraction of the sampled clients whose valid uploads a round needs before
            the global payload is updated; below it the previous global payload is kept.
        eval_every: evaluate every N rounds (and always the last).
        max_client_share: largest share of the pooling weight one client may have, per class for
            statistics and overall for averaged weights (None: weights are the claimed counts).
    """

    def __init__(
        self,
        *,
        num_rounds: int,
        num_clients: int,
        num_classes: int,
        feature_dim: int,
        recorder: ResultsRecorder,
        max_count: float = float("inf"),
        fraction_fit: float = 1.0,
        min_fit_fraction: float = 1.0,
        eval_every: int = 1,
        max_client_share: float | None = None,
    ) -> None:
        super().__init__()
        self.num_rounds = num_rounds
        self.num_clients = num_clients
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.recorder = recorder
        self.max_count = max_count
        self.fraction_fit = fraction_fit
        self.min_fit_fraction = min_fit_fraction
        self.eval_every = eval_every
        self.max_client_share = max_client_share
        self.global_payload = Payload()
        self._round_start = 0.0
        self._fit_sent = 0
        self._bytes_down = 0
        self._array_bytes_down = 0
        # A node names its client itself (metrics["cid"]; in deployment its node config picks it).
        # The first accepted upload binds the two for the rest of the run, so a node cannot later
        # speak for another client, nor take over an id that is already another node's.
        # A binding lasts while its node is connected: a node that left (a SuperNode restarted without
        # authentication comes back under a new node id) frees its client id for the next node.
        self._cid_of_node: dict[str, int] = {}
        self._node_of_cid: dict[int, str] = {}
        self._connected: set[str] | None = None  # the nodes of the round being aggregated; None = unknown
        # Rounds before this one were done before the checkpoint this run resumed from
        # (``fedvtc.checkpoint``); Flower still counts rounds from 1, so those are skipped.
        self.first_round = 1
        # Called with the round number once a round is recorded (checkpoints, a requested stop).
        self.after_round: list[Callable[[int], None]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_rounds={self.num_rounds}, num_clients={self.num_clients})"

    @classmethod
    def from_settings(cls, run: Any, **kwargs: Any) -> HeteroStrategy:
        """Build from run settings; an algorithm with options of its own overrides this."""
        return cls(**kwargs)

    # ---- what an algorithm implements -------------------------------------------------------

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        """Combine the accepted uploads (sorted by client id) into the next global payload."""
        return Payload()

    def check_upload(self, payload: Payload) -> None:
        """Algorithm-specific acceptance test of a decoded upload; raise ``PayloadError`` to reject."""

    def extra_upload_shapes(self) -> Sequence[tuple[int, ...]] | None:
        """Shapes of the model arrays clients upload beside their statistics (None: none)."""
        return None

    def server_state(self) -> dict[str, Any]:
        """Everything the server carries from one round to the next, for a checkpoint.

        An algorithm that keeps more than the global payload (a server-trained model) extends this
        and ``load_server_state``; per-round scratch values need not be saved.
        """
        return {"global_payload": self.global_payload}

    def load_server_state(self, state: dict[str, Any]) -> None:
        """Restore what ``server_state`` returned (resuming from a checkpoint)."""
        self.global_payload = state["global_payload"]

    # ---- Flower ---------------------------------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(encode(self.global_payload))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        if server_round < self.first_round:  # done before the checkpoint: Flower cancels the round
            return []
        self._round_start = time.perf_counter()
        wanted = max(1, math.ceil(self.fraction_fit * self.num_clients))
        clients = client_manager.sample(num_clients=wanted, min_num_clients=wanted)
        self._connected = {str(node) for node in client_manager.all()}
        config = {"server_round": server_round, "num_rounds": self.num_rounds}
        self._fit_sent = len(clients)
        self._bytes_down = parameters_nbytes(parameters) * len(clients)
        self._array_bytes_down = payload_nbytes(parameters_to_ndarrays(parameters)) * len(clients)
        return [(client, FitIns(parameters, dict(config))) for client in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        start = time.perf_counter()
        uploads, rejected = self._validate(results)
        for failure in failures:
            log.warning("round %d: a client failed: %r", server_round, failure)
        needed = math.ceil(self.min_fit_fraction * self._fit_sent)
        if len(uploads) >= max(needed, 1):
            self.global_payload = self.aggregate(server_round, self._bound_influence(uploads))
        else:
            log.warning(
                "round %d: only %d valid uploads of %d needed; keeping the previous global payload",
                server_round, len(uploads), needed,
            )
        parameters = ndarrays_to_parameters(encode(self.global_payload))
        self.recorder.record_fit(
            server_round,
            bytes_up=sum(parameters_nbytes(res.parameters) for _, res in results),
            bytes_down=self._bytes_down,
            array_bytes_up=sum(u.array_bytes for u in uploads),
            array_bytes_down=self._array_bytes_down,
            clients_sent=self._fit_sent,
            fit_metrics=[dict(u.metrics) for u in uploads],
            rejected=rejected,
            failures=len(failures),
            server_seconds=time.perf_counter() - start,
        )
        return parameters, {"accepted": len(uploads), "rejected": len(rejected)}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round < self.first_round:  # done before the checkpoint: nothing to evaluate
            return []
        if server_round % self.eval_every and server_round != self.num_rounds:
            self._end_round(server_round)
            return []
        clients = client_manager.sample(num_clients=client_manager.num_available())
        ins = EvaluateIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), {"server_round": server_round})
        return [(client, ins) for client in clients]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        metrics = [dict(res.metrics) for _, res in results if _has_eval_metrics(res.metrics)]
        for failure in failures:
            log.warning("round %d: a client failed to evaluate: %r", server_round, failure)
        if metrics:
            self.recorder.record_eval(server_round, metrics)
        self._end_round(server_round)
        if not results:
            return None, {}
        loss = float(np.mean([res.loss for _, res in results]))
        return loss, {"global_accuracy": float(np.mean([m["global_accuracy"] for m in metrics]))} if metrics else {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """No centralized evaluation: there is no global model, each client is evaluated."""
        return None

    def _end_round(self, server_round: int) -> None:
        """Close the round in the results, then run the ``after_round`` hooks (checkpointing)."""
        self.recorder.end_round(server_round, time.perf_counter() - self._round_start)
        for hook in self.after_round:
            hook(server_round)

    # ---- validation -----------------------------------------------------------------------------

    def _bound_influence(self, uploads: list[Upload]) -> list[Upload]:
        """Apply ``max_client_share`` to the weights the algorithm will pool or average with."""
        share = self.max_client_share
        if share is None or not uploads:
            return uploads
        examples = cap_weights([u.num_examples for u in uploads], share)
        with_stats = [i for i, u in enumerate(uploads) if u.payload.stats is not None]
        capped_stats = dict(zip(with_stats, cap_class_counts([uploads[i].payload.stats for i in with_stats], share)))
        return [
            replace(
                u,
                num_examples=float(examples[i]),
                payload=replace(u.payload, stats=capped_stats[i]) if i in capped_stats else u.payload,
            )
            for i, u in enumerate(uploads)
        ]

    def _validate(
        self, results: list[tuple[ClientProxy, FitRes]]
    ) -> tuple[list[Upload], list[dict[str, Any]]]:
        uploads: list[Upload] = []
        rejected: list[dict[str, Any]] = []
        seen: set[int] = set()
        claimants: dict[Any, set[str]] = {}  # this round: the nodes that claim each client id
        for proxy, res in results:
            claimants.setdefault(res.metrics.get("cid"), set()).add(str(proxy.cid))
        for proxy, res in results:
            cid = res.metrics.get("cid")
            node = str(proxy.cid)
            try:
                if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < self.num_clients:
                    raise PayloadError(f"missing or invalid client id {cid!r}")
                if node in self._cid_of_node and self._cid_of_node[node] != cid:
                    raise PayloadError(f"node {node} is client {self._cid_of_node[node]}, not client {cid}")
                owner = self._node_of_cid.get(cid)
                if owner is not None and owner != node and (self._connected is None or owner in self._connected):
                    raise PayloadError(f"client id {cid} belongs to node {owner}")
                if owner is not None and owner != node:  # its node left: the id is free again
                    del self._cid_of_node[owner]
                    owner = None
                if owner is None and len(claimants[cid]) > 1:  # no way to tell which one it is
                    raise PayloadError(f"client id {cid} claimed by {len(claimants[cid])} nodes in one round")
                if cid in seen:
                    raise PayloadError(f"client id {cid} answered twice in one round")
                try:
                    arrays = parameters_to_ndarrays(res.parameters)
                except Exception as error:  # undecodable bytes
                    raise PayloadError(f"arrays cannot be deserialized ({error})") from error
                payload = decode(
                    arrays,
                    num_classes=self.num_classes,
                    feature_dim=self.feature_dim,
                    max_count=self.max_count,
                    extra_shapes=self.extra_upload_shapes(),
                )
                self.check_upload(payload)
            except PayloadError as error:
                log.warning("rejected upload from client %r (node %s): %s", cid, proxy.cid, error)
                rejected.append({"cid": cid if isinstance(cid, int) else None, "reason": str(error)})
                continue
            seen.add(cid)
            self._cid_of_node[node], self._node_of_cid[cid] = cid, node
            uploads.append(
                Upload(cid, payload, int(res.num_examples), dict(res.metrics), payload_nbytes(arrays))
            )
        uploads.sort(key=lambda u: u.cid)
        return uploads, rejected


def _has_eval_metrics(metrics: dict[str, Scalar]) -> bool:
    return all(k in metrics for k in ("cid", "arch", "global_accuracy", "local_accuracy"))
