"""The algorithms a run can use, by name: ``algorithm=<name>`` in the config.

Each entry is an ``Algorithm``: the frozen settings dataclass built from its ``conf/algorithm/``
file, the ``HeteroClient`` subclass and the ``HeteroStrategy`` subclass. Adding an algorithm means
adding a module here, one line in ``ALGORITHMS`` and a YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from fedvtc.algorithms.ccvr import CCVRClient, CCVRSettings, CCVRStrategy
from fedvtc.algorithms.fedgen import FedGenClient, FedGenSettings, FedGenStrategy
from fedvtc.algorithms.fedproto import FedProtoClient, FedProtoSettings, FedProtoStrategy
from fedvtc.algorithms.fedtgp import FedTGPClient, FedTGPSettings, FedTGPStrategy
from fedvtc.algorithms.fedtype import FedTypeClient, FedTypeSettings, FedTypeStrategy
from fedvtc.algorithms.fedvtc import FedVTCClient, FedVTCSettings, FedVTCStrategy
from fedvtc.algorithms.local import LocalClient, LocalSettings, LocalStrategy
from fedvtc.settings import ConfigError, dataclass_from_mapping


@dataclass(frozen=True)
class Algorithm:
    settings: type
    client: type
    strategy: type
    # Whether its clients decode synthetic images, which the run's reference classifier then scores
    # (``eval.reference_model``); the others skip training that classifier.
    synthetic_images: bool = False


ALGORITHMS: dict[str, Algorithm] = {
    "fedvtc": Algorithm(FedVTCSettings, FedVTCClient, FedVTCStrategy, synthetic_images=True),
    "local": Algorithm(LocalSettings, LocalClient, LocalStrategy),
    "fedproto": Algorithm(FedProtoSettings, FedProtoClient, FedProtoStrategy),
    "fedtgp": Algorithm(FedTGPSettings, FedTGPClient, FedTGPStrategy),
    "ccvr": Algorithm(CCVRSettings, CCVRClient, CCVRStrategy),
    "fedgen": Algorithm(FedGenSettings, FedGenClient, FedGenStrategy),
    "fedtype": Algorithm(FedTypeSettings, FedTypeClient, FedTypeStrategy),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}'; available: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def algorithm_settings(name: str, values: Mapping[str, Any]) -> Any:
    """The algorithm's settings dataclass built from its config group (minus ``name``)."""
    return dataclass_from_mapping(get_algorithm(name).settings, values, "algorithm")
