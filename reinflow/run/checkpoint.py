"""Atomic, pruned checkpoints: ``<root>/iter_N/`` folders that are either complete or absent.

A checkpoint folder holds

- ``weights.safetensors``: the trainable weights (every parameter, or the LoRA adapter), by name;
- ``trainer_state.pt``: the rest of ``PolicyTrainer.state()`` (optimizer, LR scheduler, RNG
  states), ``torch.save``d and read back with ``weights_only=True``;
- ``meta.json``: iteration, config fingerprint and the caller's ``extra`` (data cursor, MLflow run
  id, anything JSON);
- ``COMPLETE``: an empty marker, written last.

How a crash can never leave a half checkpoint: everything is written into
``<root>/.tmp-iter_N-<pid>/``, each file fsynced, then the ``COMPLETE`` marker, the folder fsynced,
and only then is the folder renamed to ``iter_N`` (``os.replace``, atomic on POSIX) and the root
fsynced. So an ``iter_N`` folder appears whole or not at all. ``latest_checkpoint`` additionally
requires the ``COMPLETE`` marker (belt and braces for folders copied by hand or file systems where
rename is not atomic) and ignores every name that is not ``iter_<int>``: temporary folders left by
a killed writer are never picked, and the next write removes those whose writer is gone.

Pruning happens only after the new checkpoint is in place: the last ``keep`` are kept, and older
ones are renamed away (atomic) before they are deleted, so a crash mid-delete leaves no half
folder under an ``iter_N`` name. Checkpoints *newer* than the one written (left by a timeline that
was resumed from an earlier checkpoint) are removed too, so the latest is always the last written.

A write the operating system refuses (disk full, file too large for a quota or ``ulimit -f``)
raises ``CheckpointWriteError`` naming the checkpoint and the OS's reason, after removing the
temporary folder: the earlier checkpoints stay as they were and a resume starts from the last one.

The train flow calls ``write_checkpoint`` in a background thread, on a copy of the state, one write
at a time (``reinflow.run.checkpoint_writer``); all of the above holds there as it does here.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reinflow.errors import ReinflowError, RunInterrupted
from reinflow.faults import crash_point
from reinflow.run.checkpoint_files import COMPLETE
from reinflow.run.owner import pid_exists

WEIGHTS = "weights.safetensors"
TRAINER_STATE = "trainer_state.pt"
META = "meta.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^iter_(\d+)$")
_LEFTOVER = re.compile(r"^\.(tmp|trash)-iter_\d+-(\d+)$")
_RESERVED = ("iteration", "config_fingerprint")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class CheckpointError(ReinflowError):
    """A checkpoint that is missing, incomplete or does not fit; the message says which and why."""


class ConfigChangedError(CheckpointError):
    """The checkpoint was written with another config (its fingerprint differs)."""


class CheckpointWriteError(RunInterrupted):
    """The operating system refused a checkpoint write (no space left, file too large, ...)."""


def write_checkpoint(root: Path, iteration: int, trainer_state: dict, extra: dict, *, fingerprint: str,
                     keep: int) -> Path:
    """Write ``root/iter_<iteration>/`` atomically and keep only the last ``keep`` checkpoints.

    Args:
        trainer_state: ``PolicyTrainer.state()``: a ``weights`` dict of tensors plus picklable rest.
        extra: JSON-serialisable values to store (data cursor, MLflow run id, ...); the keys
            ``iteration`` and ``config_fingerprint`` are reserved.
        fingerprint: ``ExperimentConfig.fingerprint()`` of the run's config.
        keep: how many checkpoints to keep (``train.keep_checkpoints``), at least 1.

    Returns the final folder. An existing ``iter_<iteration>`` is replaced.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    clash = [key for key in _RESERVED if key in extra]
    if clash:
        raise ValueError(f"extra must not contain the reserved keys {clash}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    temporary = root / f".tmp-iter_{iteration}-{os.getpid()}"
    final = root / f"iter_{iteration}"
    try:
        _write_files(temporary, iteration, trainer_state, extra, fingerprint)
        _move_into_place(temporary, final)
    except (OSError, RuntimeError, SafetensorError) as error:
        cause = _os_error(error)
        if cause is None:
            raise
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {os.strerror(cause)} (errno {errno.errorcode.get(cause, cause)}); "
            "the earlier checkpoints are intact"
        ) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # only still there if writing failed
    _prune(root, iteration, keep)
    return final


def _write_files(folder: Path, iteration: int, trainer_state: dict, extra: dict, fingerprint: str) -> None:
    """Every file of a checkpoint, each fsynced, the ``COMPLETE`` marker last, then the folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in trainer_state["weights"].items()}
    save_file(weights, str(folder / WEIGHTS))
    _fsync(folder / WEIGHTS)
    crash_point("checkpoint", iteration)  # fault-injection tests: half a checkpoint on disk
    rest = {key: value for key, value in trainer_state.items() if key != "weights"}
    with open(folder / TRAINER_STATE, "wb") as handle:
        torch.save(rest, handle)
        _flush(handle)
    meta = {"format": FORMAT_VERSION, "iteration": iteration, "config_fingerprint": fingerprint, "extra": extra}
    _write_text(folder / META, json.dumps(meta, indent=2, sort_keys=True))
    _write_text(folder / COMPLETE, "")
    _fsync(folder)


def _move_into_place(temporary: Path, final: Path) -> None:
    """Rename ``temporary`` to ``final`` (moving an existing ``final`` aside first), fsync the root."""
    root = final.parent
    trash = root / f".trash-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, trash)
    os.replace(temporary, final)
    _fsync(root)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(root: Path, written: int, keep: int) -> None:
    """Remove checkpoints newer than ``written`` and all but the last ``keep`` up to it."""
    found = list_checkpoints(root)
    older = [path for iteration, path in found if iteration <= written]
    doomed = [path for iteration, path in found if iteration > written] + older[:-keep]
    for path in doomed:
        trash = root / f".trash-{path.name}-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash)
    if doomed:
        _fsync(root)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(iteration, folder)`` of every complete checkpoint under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir() and (entry / COMPLETE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest iteration under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def newest_run_checkpoint(experiment_folder: Path) -> Path | None:
    """The newest complete checkpoint of the experiment's runs (``<run>/checkpoints/iter_N``): the
    latest iteration of the most recently written run that has one; None when no run has one."""
    runs = sorted(experiment_folder.glob("*/checkpoints"), key=lambda folder: folder.stat().st_mtime, reverse=True)
    return next((found for found in map(latest_checkpoint, runs) if found is not None), None)


def read_checkpoint(path: Path, *, fingerprint: str, allow_config_change: bool = False) -> tuple[dict, dict]:
    """Load ``(trainer_state, extra)`` from a checkpoint folder (CPU tensors).

    ``extra`` is what was written plus ``iteration`` and ``config_fingerprint``. Raises
    ``ConfigChangedError`` when the checkpoint's fingerprint differs from ``fingerprint``, unless
    ``allow_config_change``; ``CheckpointError`` when the folder is not a complete checkpoint.
    """
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format']}, this reinflow reads {FORMAT_VERSION}")
    stored = meta["config_fingerprint"]
    if stored != fingerprint and not allow_config_change:
        raise ConfigChangedError(
            f"{path} was written with config fingerprint {stored}, but the current config's is {fingerprint}: "
            "resume with the config the run started with, or allow the change explicitly "
            "(allow_config_change=True) if it is intended"
        )
    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    state["weights"] = load_file(str(path / WEIGHTS))
    extra = meta["extra"] | {"iteration": meta["iteration"], "config_fingerprint": stored}
    return state, extra


# ----------------------------------------------------------------------------- file-system helpers


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        _flush(handle)


def _flush(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(error: BaseException) -> int | None:
    """The errno behind a failed write, or None: an ``OSError`` itself, one that torch's writer
    wrapped in a ``RuntimeError`` (it is the exception's context), or safetensors' ``(os error N)``."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        match = _RUST_OS_ERROR.search(str(error)) if isinstance(error, SafetensorError) else None
        if match:
            return int(match.group(1))
        error = error.__cause__ or error.__context__
    return None


def _remove_leftovers(root: Path) -> None:
    """Delete ``.tmp-*`` / ``.trash-*`` folders whose writing process no longer runs."""
    for entry in root.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and not _alive(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (our own counts as gone: we start afresh)."""
    return pid != os.getpid() and pid_exists(pid)
