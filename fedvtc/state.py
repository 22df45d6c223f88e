"""Client state on disk: what survives between rounds, written atomically.

Flower builds a new client object for every message (and, in deployment, a new process), so a
client's model, generator, optimizer states and last statistics live in one file per client,
``<state_dir>/client_<id>.pt``. It is written to a temporary file and renamed, so a crash mid-write
leaves the previous round's state intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def state_path(state_dir: str | os.PathLike, cid: int) -> Path:
    return Path(state_dir) / f"client_{cid}.pt"


def clear_states(state_dir: str | os.PathLike) -> int:
    """Remove every client state file (``client_<i>.pt``) from ``state_dir``; return how many.

    A new run starts from scratch: a client finding the state of an earlier run in the same place
    (a cell run again into its old directory) would silently continue that run instead.
    """
    removed = 0
    for path in Path(state_dir).glob("client_*.pt"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The saved state, or None if the client has none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        # weights_only=False: the state holds numpy statistics next to tensors; it is our own file.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, do not guess
        raise RuntimeError(
            f"client state {path} cannot be read ({error}); delete it to restart that client "
            "from scratch, or point simulation.state_dir at the right directory"
        ) from error
