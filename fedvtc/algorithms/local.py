"""``local``: every client trains alone on its own data; nothing crosses the network but metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fedvtc.client import HeteroClient
from fedvtc.strategy import HeteroStrategy


@dataclass(frozen=True)
class LocalSettings:
    """No settings beyond the shared ``train`` group."""


class LocalClient(HeteroClient):
    """Trains on local data each round (``HeteroClient.train_round``'s default) and uploads nothing."""


class LocalStrategy(HeteroStrategy):
    """Keeps an empty global payload; only orchestrates rounds and evaluation."""
