"""Run settings for the ``flwr run`` path: Hydra composed inside the apps from the run config.

``flwr run . --run-config "overrides='dataset=cifar10 num_rounds=3'"`` passes one string of Hydra
overrides; the ServerApp and every ClientApp compose ``conf/config.yaml`` with it, so both sides
derive identical settings. Output goes to ``outputs/flwr-run-<run id>`` unless ``output_dir=...``
is among the overrides (the run id is the same on the server and on every client).

In deployment each SuperNode adds its own node config (``flower-supernode --node-config
"partition-id=0 num-partitions=2 data-dir='/data' state-dir='/var/fedvtc'"``); ``for_node`` applies
it to the settings of that node's ClientApp.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from flwr.common import Context
from hydra import compose, initialize_config_dir

from fedvtc.config import ConfigError, RunSettings, build_settings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def settings_from_context(context: Context) -> RunSettings:
    """Compose the config from ``run_config["overrides"]`` and build validated settings."""
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    output_dir = None
    kept = []
    for item in overrides:
        if item.startswith("output_dir="):
            output_dir = item.split("=", 1)[1]
        else:
            kept.append(item)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=kept)
    return build_settings(cfg, output_dir=output_dir or Path("outputs") / f"flwr-run-{context.run_id}")


# Node config keys the ClientApp understands (``flower-supernode --node-config``).
NODE_KEYS = ("partition-id", "num-partitions", "data-dir", "state-dir")


def for_node(s: RunSettings, node_config: Mapping[str, Any], run_id: int | None = None) -> tuple[int, RunSettings]:
    """The client id and the settings of the node whose node config is ``node_config``.

    ``partition-id`` (required) is the client id; ``num-partitions`` (required) must equal
    ``num_clients``. Optional, for deployment: ``data-dir`` replaces the config's ``data_dir`` on this
    node; ``state-dir`` is where the node keeps its client's state between messages (every message
    runs in a fresh process), in a sub-directory ``run-<run_id>`` so that a later run on the same
    SuperNode starts from scratch. In simulation the node config holds only the two required keys
    and the settings are returned unchanged.

    Raises:
        ConfigError: a missing or inconsistent key, with what to change.
    """
    unknown = sorted(set(node_config) - set(NODE_KEYS))
    if unknown:
        raise ConfigError(f"node config: unknown key(s) {unknown}; valid keys: {list(NODE_KEYS)}")
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise ConfigError(
                f"node config: '{key}' is missing; start the SuperNode with "
                f"--node-config \"partition-id=<i> num-partitions={s.num_clients}\""
            )
    num_partitions = _as_int(node_config["num-partitions"], "num-partitions")
    if num_partitions != s.num_clients:
        raise ConfigError(
            f"node config: num-partitions={num_partitions} but the run has num_clients={s.num_clients}; "
            f"start {s.num_clients} SuperNodes with num-partitions={s.num_clients} or run with "
            f"overrides 'num_clients={num_partitions}'"
        )
    cid = _as_int(node_config["partition-id"], "partition-id")
    if not 0 <= cid < s.num_clients:
        raise ConfigError(f"node config: partition-id={cid} is outside 0..{s.num_clients - 1}")
    changes: dict[str, Any] = {}
    if "data-dir" in node_config:
        changes["data_dir"] = str(Path(str(node_config["data-dir"])).expanduser().resolve())
    if "state-dir" in node_config:
        state_dir = Path(str(node_config["state-dir"])).expanduser().resolve()
        if run_id is not None:
            state_dir = state_dir / f"run-{run_id}"
        changes["share_cache_dir"] = str(Path(str(node_config["state-dir"])).expanduser().resolve() / "data")
        changes["state_dir"] = str(state_dir)
        changes["simulation"] = replace(s.simulation, state_dir=str(state_dir))
    return cid, (replace(s, **changes) if changes else s)


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise ConfigError(f"node config: {key} must be an integer, got {value!r}")
    return int(value)
