"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
# Where the offline copies of the datasets live on this project's machines (see README there).
_MATERIALIZE_CANDIDATES = (
    _REPO.parent / "shared" / "datasets" / "materialize.py",
    _REPO / "shared" / "datasets" / "materialize.py",
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision data root holding at least MNIST and CIFAR-10.

    ``$FEDVTC_DATA_DIR`` when set (nothing is written there beyond what torchvision unpacks);
    otherwise a temporary directory filled once per session by the shared ``materialize.py``
    (about 10 s). Skips the requesting tests when neither is available.
    """
    configured = os.environ.get("FEDVTC_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    script = next((p for p in _MATERIALIZE_CANDIDATES if p.is_file()), None)
    if script is None:
        pytest.skip("no dataset copies: set FEDVTC_DATA_DIR or provide ../shared/datasets/materialize.py")
    root = tmp_path_factory.mktemp("data")
    subprocess.run(
        [sys.executable, str(script), str(root), "--only", "mnist,cifar10"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root
