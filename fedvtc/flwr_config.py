"""Run settings for the ``flwr run`` path: Hydra composed inside the apps from the run config.

``flwr run . --run-config "overrides='dataset=cifar10 num_rounds=3'"`` passes one string of Hydra
overrides; the ServerApp and every ClientApp compose ``conf/config.yaml`` with it, so both sides
derive identical settings. Output goes to ``outputs/flwr-run-<run id>`` unless ``output_dir=...``
is among the overrides (the run id is the same on the server and on every client).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from flwr.common import Context
from hydra import compose, initialize_config_dir

from fedvtc.config import RunSettings, build_settings

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
