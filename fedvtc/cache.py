"""Where this project keeps what it can make again, between processes and runs: trained judges
(``fedvtc.reference``) and the decoded arrays of torchvision datasets (``fedvtc.data``).

``$FEDVTC_CACHE_DIR`` (default ``~/.cache/fedvtc``); ``FEDVTC_CACHE_DIR=off`` keeps nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FEDVTC_CACHE_DIR"


def cache_dir() -> Path | None:
    """The cache directory, or None when ``FEDVTC_CACHE_DIR=off``."""
    configured = os.environ.get(CACHE_ENV, "")
    if configured.lower() == "off":
        return None
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fedvtc"
