"""The disk filling up during a checkpoint write.

The run folder sits on a size-limited tmpfs the test mounts (needs root and ``mount``; skipped with
the reason elsewhere). A checkpoint is written into a temporary folder and renamed into place
(``reinflow/run/checkpoint.py``), so a write the disk refuses must leave no half checkpoint under an
``iter_N`` name, keep the earlier checkpoints loadable, and end the run with one line naming the
checkpoint and the OS's reason; once space is freed, ``--resume`` finishes the run.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers.train_run import EXPERIMENT, assert_run_is_whole, error_line, project, run_dir, train
from reinflow.run.checkpoint import CheckpointWriteError, list_checkpoints, read_checkpoint, write_checkpoint
from reinflow.config import load_config
from reinflow.config.models import resolve_model

MIB = 1024 * 1024


@contextlib.contextmanager
def small_filesystem(folder: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted on ``folder`` (remount it larger with ``grow``)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def grow(folder: Path, size_bytes: int) -> None:
    """Free space: remount the tmpfs on ``folder`` with a larger size (its files stay)."""
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(folder)], check=True)


def _state(megabytes: int) -> dict:
    return {"weights": {"w": torch.ones(megabytes * MIB // 4)}, "step": 1}


@pytest.mark.reliability("a full disk never leaves a half checkpoint", tried="checkpoint writes on a full tmpfs")
def test_a_checkpoint_write_on_a_full_disk_fails_cleanly_and_keeps_the_previous_one(tmp_path):
    with small_filesystem(tmp_path / "small", 8 * MIB) as root:
        write_checkpoint(root, 1, _state(2), {"cursor": 2}, fingerprint="f", keep=3)
        with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*iter_2: No space left on device"):
            write_checkpoint(root, 2, _state(6), {"cursor": 4}, fingerprint="f", keep=3)
        assert sorted(p.name for p in root.iterdir()) == ["iter_1"]  # no temp folder, no iter_2
        state, extra = read_checkpoint(root / "iter_1", fingerprint="f")
        assert extra["cursor"] == 2 and torch.equal(state["weights"]["w"], torch.ones(2 * MIB // 4))
        grow(root, 32 * MIB)
        write_checkpoint(root, 2, _state(6), {"cursor": 4}, fingerprint="f", keep=3)
        assert [i for i, _ in list_checkpoints(root)] == [1, 2]


def _model_bytes(project_root: Path) -> int:
    """Bytes of the tiny model's weights: a checkpoint holds them and Adam's two moments (~3x)."""
    folder = resolve_model(load_config(project_root / "configs" / "tiny.yaml").model.path)
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.reliability("a full disk never leaves a half checkpoint",
                         tried="the run folder on a tmpfs that fits one checkpoint of the tiny model, then freed")
def test_a_disk_full_during_a_checkpoint_fails_the_run_cleanly_and_resume_completes(tmp_path):
    root = project(tmp_path)
    weights = _model_bytes(root)
    # one checkpoint (~3x the weights) fits, a second does not: it fails writing its optimizer state
    with small_filesystem(root / "runs" / EXPERIMENT, int(4.5 * weights)) as runs:
        failed = train(root, check=False, timeout_s=400)
        assert failed.returncode == 2, failed.stderr[-3000:]
        line = error_line(failed)
        print(line)
        folder = run_dir(root)
        assert f"cannot write checkpoint {folder / 'checkpoints' / 'iter_2'}: No space left on device" in line
        assert "--resume latest" in line
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["iter_1"]  # nothing half-written
        config = load_config(root / "configs" / "tiny.yaml")
        _, extra = read_checkpoint(folder / "checkpoints" / "iter_1", fingerprint=config.fingerprint())
        assert extra["iteration"] == 1 and extra["cursor"] == 2
        grow(runs, 16 * weights)
        train(root, "--resume", "latest")
        assert_run_is_whole(root)
