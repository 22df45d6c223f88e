"""Checkpoint and resume: the server's and every client's state, saved every N rounds, atomically.

With ``checkpoint.every=N`` the server saves, once every N-th round is recorded (never after the
last round: nothing would be left to resume), everything later rounds depend on, under
``<output_dir>/checkpoint/``::

    latest                      the name of the newest complete checkpoint (replaced atomically)
    round-0004/
        manifest.json           format version, round, the run's settings and their digest, and
                                the sha256 of every file below
        config.yaml             the run's resolved config: what ``resume=`` composes the resumed run from
        server.pt               the strategy's server state (global payload, server-trained models),
                                the results so far, the server process's global RNG states
        clients/client_<i>.pt   client i's state file after the round's fit (absent: it had none yet)
        reference_classifier.pt the run's reference classifier, when it has one

A checkpoint is written into a temporary directory beside the others, renamed into place and only
then named in ``latest``; older checkpoints are deleted after that. A crash at any moment therefore
leaves ``latest`` naming a complete checkpoint (or no ``latest`` before the first one).

A resumed run (``resume=<run dir>``) checks the checkpoint (files against their sha256, its settings
against the run's), restores the client state files, the strategy and the results, and runs only
the rounds after the checkpoint's. Every random draw of a round comes from (seed, client, round,
phase) (``fedvtc.seeding``) and everything else a round reads is in the checkpoint, so the resumed
run ends with the same results as an uninterrupted run with the same config (timings aside).
It writes a complete run (all rounds) into its own output directory; the resumed directory is only
read, so the same checkpoint can be resumed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fedvtc.settings import RunSettings, resolve_device
from fedvtc.reference import REFERENCE_FILE
from fedvtc.state import state_path

if TYPE_CHECKING:
    from fedvtc.strategy import HeteroStrategy

log = logging.getLogger("fedvtc")

FORMAT = "fedvtc-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoint"
LATEST = "latest"
MANIFEST = "manifest.json"
SERVER_FILE = "server.pt"
CONFIG_FILE = "config.yaml"

# Config keys a resume may change: where things live, the hardware a client gets, checkpointing
# itself and the log level. None of them changes a number in results.json (timings aside), so they
# are left out of the settings a checkpoint must match. Every other key must stay as it was.
RESUMABLE_KEYS = (
    "resume",
    "checkpoint",
    "faults.stop_after_round",
    "data_dir",
    "simulation.state_dir",
    "simulation.num_cpus_per_client",
    "simulation.num_gpus_per_client",
    "simulation.round_timeout",
    "verbose",
    "objective",  # what a sweeper reads of the run, not what it computes
)
# RunSettings fields derived from the output directory, which is always the resumed run's own.
_DERIVED_PATHS = ("output_dir", "state_dir")
_MISSING = object()


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or made by another configuration; the message says
    which and what to do."""


class StoppedAfterRound(RuntimeError):
    """The run stopped after ``faults.stop_after_round``, as requested (a simulated crash).

    Args:
        server_round: the round after which the run stopped.
        output_dir: the run's output directory (what ``resume=`` takes).
        checkpoint_round: the round of the latest checkpoint there, or None when there is none.
    """

    def __init__(self, server_round: int, output_dir: str | os.PathLike, checkpoint_round: int | None) -> None:
        self.server_round = server_round
        self.output_dir = Path(output_dir)
        self.checkpoint_round = checkpoint_round
        if checkpoint_round is None:
            how = "no checkpoint was saved (checkpoint.every=0 or not yet due), so it cannot be resumed"
        else:
            how = (f"its latest checkpoint is after round {checkpoint_round}; continue it with "
                   f"`python run_simulation.py resume={self.output_dir}`")
        super().__init__(
            f"stopped after round {server_round} as requested by faults.stop_after_round={server_round}; {how}"
        )


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed every check of ``load_checkpoint``.

    Attributes:
        path: its directory (``.../checkpoint/round-NNNN``).
        round: the last round it covers; a resume starts at ``round + 1``.
        manifest: the parsed ``manifest.json``.
        server: the parsed ``server.pt`` (keys ``strategy``, ``results``, ``rng``).
    """

    path: Path
    round: int
    manifest: dict[str, Any]
    server: dict[str, Any]


# ---- what must match -------------------------------------------------------------------------------


def settings_record(settings: RunSettings) -> dict[str, Any]:
    """The settings that determine a run's results, as plain JSON values.

    Args:
        settings: the run's settings. ``RESUMABLE_KEYS`` and the output paths are left out.
    """
    record = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    for key in (*RESUMABLE_KEYS, *_DERIVED_PATHS):
        _pop_dotted(record, key)
    # `device: auto` means the CPU on one machine and CUDA on another, whose numbers differ.
    record["resolved_device"] = resolve_device(settings.device)
    return record


def settings_digest(record: Mapping[str, Any]) -> str:
    """sha256 of a ``settings_record`` (keys sorted, so field order does not matter)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _pop_dotted(tree: dict[str, Any], key: str) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(last, None)


def flatten_dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}`` (settings compared or listed key by key)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten_dotted(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _is_resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


# ---- saving ----------------------------------------------------------------------------------------


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    """Where a run keeps its checkpoints: ``<output_dir>/checkpoint``."""
    return Path(output_dir) / CHECKPOINT_DIR


def save_checkpoint(settings: RunSettings, server_round: int, strategy: HeteroStrategy) -> Path:
    """Save the state after ``server_round`` under ``<output_dir>/checkpoint``; return its directory.

    Call it once the round is recorded: the clients' state files in ``settings.state_dir`` are then
    those after the round's fit.

    Args:
        settings: the run's settings (output and state directories, clients, what must match).
        server_round: the round just finished.
        strategy: the run's strategy; its ``server_state()`` and its recorder's ``state()`` are saved.
    """
    root = checkpoint_root(settings.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"round-{server_round:04d}"
    if (root / name).exists():  # left by an earlier run in this directory: never replace one in place
        name = f"{name}-{secrets.token_hex(3)}"
    tmp = root / f".{name}-{secrets.token_hex(4)}.tmp"  # hidden until renamed; mkdir keeps the umask's mode
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        server = {
            "round": server_round,
            "strategy": strategy.server_state(),
            "results": strategy.recorder.state(),
            "rng": _rng_states(),
        }
        buffer = io.BytesIO()
        torch.save(server, buffer)
        files[SERVER_FILE] = _write_bytes(tmp / SERVER_FILE, buffer.getvalue())
        clients = []
        for cid in range(settings.num_clients):
            source = state_path(settings.state_dir, cid)
            if source.exists():
                files[f"clients/{source.name}"] = _copy(source, tmp / "clients" / source.name)
                clients.append(cid)
        for extra in (CONFIG_FILE, REFERENCE_FILE):
            source = Path(settings.output_dir) / extra
            if source.exists():
                files[extra] = _copy(source, tmp / extra)
        record = settings_record(settings)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "round": server_round,
            "num_rounds": settings.num_rounds,
            "algorithm": settings.algorithm_label,
            "seed": settings.seed,
            "clients_with_state": clients,
            "settings_digest": settings_digest(record),
            "settings": record,
            "files": files,
        }
        _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())  # last: marks it complete
        os.rename(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_bytes(root / f".{LATEST}.tmp", f"{name}\n".encode())
    os.replace(root / f".{LATEST}.tmp", root / LATEST)
    # Only now that `latest` names the new one: older checkpoints and leftovers of interrupted writes.
    for entry in root.iterdir():
        if entry.name in (name, LATEST):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    log.info("checkpoint after round %d: %s", server_round, root / name)
    return root / name


def _write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` and flush it to disk; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _copy(source: Path, target: Path) -> str:
    return _write_bytes(target, source.read_bytes())


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` through a temporary file beside it (never half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        _copy(source, Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rng_states() -> dict[str, Any]:
    # Nothing on the server draws from the global generators today (every draw is seeded from
    # fedvtc.seeding), but restoring them keeps a future one on the uninterrupted run's stream.
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


# ---- loading and checking -------------------------------------------------------------------------


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The directory of the checkpoint ``path`` designates.

    Args:
        path: a run's output directory (its latest checkpoint), its ``checkpoint`` directory, or
            one checkpoint's own directory (``.../checkpoint/round-NNNN``).

    Raises:
        CheckpointError: no such directory, or no checkpoint in it.
    """
    given = Path(path).expanduser()
    if not given.is_dir():
        raise CheckpointError(
            f"resume={path}: no such directory; give the output directory of a run that saved "
            "checkpoints (checkpoint.every=N)"
        )
    if (given / MANIFEST).exists():
        return given.resolve()
    for root in (given / CHECKPOINT_DIR, given):
        latest = root / LATEST
        if latest.is_file():
            name = latest.read_text().strip()
            if not name or "/" in name or not (root / name).is_dir():
                raise CheckpointError(
                    f"{latest} names {name!r}, which is not a checkpoint directory beside it: the "
                    f"checkpoint is damaged; resume from an intact copy of {root} or start the run again"
                )
            return (root / name).resolve()
    raise CheckpointError(
        f"resume={path}: there is no checkpoint in it (expected {given / CHECKPOINT_DIR / LATEST}); a run "
        "saves checkpoints only with checkpoint.every=N, the first one after round N"
    )


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a checkpoint directory, checked for format and version.

    Raises:
        CheckpointError: missing, unreadable, or of another format or version.
    """
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {MANIFEST}: it is incomplete or not a checkpoint; resume "
            "from the run's output directory (its latest complete checkpoint)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is corrupt ({error}); the checkpoint cannot be used") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format version {manifest.get('version')!r}; this fedvtc reads "
            f"version {VERSION}: resume it with the fedvtc version that wrote it, or start the run again"
        )
    for key, kind in (("round", int), ("files", dict), ("settings", dict), ("settings_digest", str)):
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"checkpoint {directory}: {MANIFEST} lacks a valid '{key}'; the checkpoint is corrupt")
    return manifest


def load_checkpoint(path: str | os.PathLike, settings: RunSettings) -> Checkpoint:
    """Find, check and read the checkpoint ``path`` designates, for a run with ``settings``.

    Args:
        path: see ``find_checkpoint``.
        settings: the resuming run's settings; all but ``RESUMABLE_KEYS`` must equal the checkpoint's.

    Raises:
        CheckpointError: no checkpoint, a corrupt file (sha256 mismatch, unreadable), settings that
            differ from the checkpointed run's (naming each key), or no round left to run.
    """
    directory = find_checkpoint(path)
    manifest = read_manifest(directory)
    if SERVER_FILE not in manifest["files"]:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} lists no {SERVER_FILE}; the checkpoint is corrupt")
    for name, digest in manifest["files"].items():
        file = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not file.is_file():
            raise CheckpointError(f"checkpoint {directory}: {name} is missing; the checkpoint is incomplete")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise CheckpointError(
                f"checkpoint {directory}: {name} is corrupt (its sha256 differs from the manifest's: it was "
                "truncated or changed after it was written); resume from an intact copy or start the run again"
            )
    _check_settings(directory, manifest, settings)
    done = manifest["round"]
    if done >= settings.num_rounds:
        raise CheckpointError(
            f"checkpoint {directory} is after round {done} of {settings.num_rounds}: the run is complete, "
            "there is nothing to resume"
        )
    try:
        server = torch.load(directory / SERVER_FILE, map_location="cpu", weights_only=False)
        if server["round"] != done:
            raise ValueError(f"it holds round {server['round']}, the manifest says {done}")
    except Exception as error:  # intact bytes that this code cannot use
        raise CheckpointError(f"checkpoint {directory}: {SERVER_FILE} cannot be read ({error})") from error
    return Checkpoint(directory, done, manifest, server)


def _check_settings(directory: Path, manifest: Mapping[str, Any], settings: RunSettings) -> None:
    mine = settings_record(settings)
    if manifest["settings_digest"] == settings_digest(mine):
        return
    theirs, ours = flatten_dotted(manifest["settings"]), flatten_dotted(mine)
    differ = [
        f"{key}: checkpoint {theirs.get(key, '<absent>')!r}, this run {ours.get(key, '<absent>')!r}"
        for key in sorted(set(theirs) | set(ours))
        if theirs.get(key, _MISSING) != ours.get(key, _MISSING)
    ]
    if not differ:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST}'s settings do not match its digest; it was edited")
    more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
    raise CheckpointError(
        f"checkpoint {directory} was made with other settings, so resuming would not reproduce its run: "
        + "; ".join(differ[:8]) + more
        + ". Resume with that run's settings (run_simulation.py resume=<dir> takes them from the checkpoint), "
        "or start a new run without resume="
    )


# ---- resuming ---------------------------------------------------------------------------------------


def restore_checkpoint(checkpoint: Checkpoint, settings: RunSettings, strategy: HeteroStrategy) -> None:
    """Put the run back in the state after ``checkpoint.round``: client files, strategy, results.

    Args:
        checkpoint: a checked checkpoint (``load_checkpoint``).
        settings: the resuming run's settings: its state and output directories are written.
        strategy: a freshly built strategy; it skips the checkpoint's rounds afterwards.

    Raises:
        CheckpointError: the data gives a different partition than the checkpointed run's.
    """
    results = checkpoint.server["results"]
    recorder = strategy.recorder
    if results["clients"] != recorder.clients:
        raise CheckpointError(
            f"checkpoint {checkpoint.path}: the dataset under data_dir={settings.data_dir} splits into other "
            "client shares (sizes or class counts) than the checkpointed run's; point data_dir at the same "
            "dataset files"
        )
    # Exactly the checkpoint's client files; a client that had none then must start from scratch.
    for cid in range(settings.num_clients):
        source = checkpoint.path / "clients" / state_path("", cid).name
        target = state_path(settings.state_dir, cid)
        if source.exists():
            _copy_atomic(source, target)
        else:
            target.unlink(missing_ok=True)
    reference = checkpoint.path / REFERENCE_FILE
    if reference.exists():
        _copy_atomic(reference, Path(settings.output_dir) / REFERENCE_FILE)
    strategy.load_server_state(checkpoint.server["strategy"])
    recorder.load_state(results)
    # This process's description of the run, plus what only the checkpointed run knew (its reference
    # classifier), plus where it was resumed from.
    meta = {**results["meta"], **recorder.meta}
    meta["resumed_from"] = [
        *results["meta"].get("resumed_from", []),
        {"checkpoint": str(checkpoint.path), "round": checkpoint.round},
    ]
    recorder.meta = meta
    strategy.first_round = checkpoint.round + 1
    _set_rng_states(checkpoint.server["rng"])
    recorder.save()
    log.info("resumed from %s: rounds %d-%d to run", checkpoint.path, checkpoint.round + 1, settings.num_rounds)


def attach(strategy: HeteroStrategy, settings: RunSettings) -> None:
    """Resume ``strategy`` when ``settings.resume`` is set; save checkpoints and stop as configured.

    Args:
        strategy: the run's freshly built strategy.
        settings: ``resume``, ``checkpoint.every`` and ``faults.stop_after_round`` are read.
    """
    if settings.resume:
        restore_checkpoint(load_checkpoint(settings.resume, settings), settings, strategy)
    if settings.checkpoint.every > 0 or settings.faults.stop_after_round is not None:
        strategy.after_round.append(_after_round(settings, strategy))


def _after_round(settings: RunSettings, strategy: HeteroStrategy) -> Callable[[int], None]:
    def after_round(server_round: int) -> None:
        every = settings.checkpoint.every
        if every and server_round % every == 0 and server_round < settings.num_rounds:
            try:
                save_checkpoint(settings, server_round, strategy)
            except OSError as error:  # e.g. a full disk: the run itself can go on, say what is lost
                log.error("checkpoint after round %d not saved (%s); the previous one stays in force",
                          server_round, error)
        if server_round == settings.faults.stop_after_round:
            raise StoppedAfterRound(server_round, settings.output_dir, latest_round(settings.output_dir))

    return after_round


def latest_round(output_dir: str | os.PathLike) -> int | None:
    """The round of the latest checkpoint in a run's output directory, or None when it has none."""
    try:
        return int(read_manifest(find_checkpoint(checkpoint_root(output_dir)))["round"])
    except CheckpointError:
        return None


def resume_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The config of a resumed run: the checkpointed run's, with the command line's resumable keys.

    Args:
        cfg: the composed config of the command line (``resume`` set).
        overrides: the command line's overrides (Hydra's ``overrides.task``). Those of
            ``RESUMABLE_KEYS`` are applied; any other must leave the checkpointed value as it is.

    Raises:
        CheckpointError: no checkpoint or no readable config in it, or an override that would change
            the run (naming it and what may change).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    directory = find_checkpoint(str(cfg.resume))
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} holds no {CONFIG_FILE} (it was not written by run_simulation.py), so "
            "the run's configuration is unknown"
        )
    try:
        saved = OmegaConf.load(path)
    except Exception as error:
        raise CheckpointError(f"checkpoint {directory}: {CONFIG_FILE} cannot be read ({error})") from error
    if not isinstance(saved, DictConfig):
        raise CheckpointError(f"checkpoint {directory}: {CONFIG_FILE} is not a mapping")
    refused = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if _is_resumable(key) and value is not _MISSING:
            OmegaConf.update(saved, key, value, force_add=True)
        elif value is _MISSING or override.is_delete() or not _same(value, OmegaConf.select(saved, key, default=_MISSING)):
            refused.append(override.input_line)
    if refused:
        raise CheckpointError(
            f"resume: {' '.join(refused)} would change the checkpointed run, which a resume repeats exactly "
            f"(its config: {path}). A resume may change only {', '.join(k for k in RESUMABLE_KEYS if k != 'resume')}; "
            "to run another configuration, start a new run without resume="
        )
    saved.resume = str(cfg.resume)
    return saved


def _same(a: Any, b: Any) -> bool:
    if b is _MISSING:
        return False
    plain = [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in (a, b)]
    return plain[0] == plain[1]
