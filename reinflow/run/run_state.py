"""The folder of one training run and what resuming it needs.

``<tracking.run_dir>/<experiment>/<run name>/`` holds ``run.json`` (name, MLflow run id, config
fingerprint, status, owner), ``rollouts/``, ``judged/``, ``eval/`` and ``checkpoints/``. A run resumes
from its last complete checkpoint: the iteration after it, with the data cursor saved in it.

The status written is ``running`` (from the start, and again on each resume) or ``finished``. A
process killed outright (SIGKILL, the OOM killer, a power cut) writes nothing more, so readers
ask :func:`effective_status`: a ``running`` run whose owner (host, pid, process start time: see
``run.owner``) is gone from this host reads as ``crashed``. A run from another host, or one written
before owners were recorded, reads as what it says.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reinflow.config import ExperimentConfig
from reinflow.errors import ReinflowError
from reinflow.run.owner import current_owner, owner_gone

RUN_FILE = "run.json"


class ResumeError(ReinflowError):
    """There is no run to resume, or it was made with another config."""


@dataclass
class RunInfo:
    """What ``run.json`` records."""

    name: str
    experiment: str
    config_fingerprint: str
    mlflow_run_id: str | None
    status: str  # running | finished, as written; readers may see crashed (effective_status)
    created: float
    owner: dict[str, Any] | None = None  # host, pid, start_ticks of the process running it (run.owner)

    def save(self, run_dir: Path) -> None:
        """Write ``run.json`` atomically."""
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = run_dir / (RUN_FILE + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=2))
        os.replace(partial, run_dir / RUN_FILE)


def experiment_dir(config: ExperimentConfig, project_root: Path) -> Path:
    """Where the experiment's runs live."""
    return project_root / config.tracking.run_dir / config.experiment


def new_run(config: ExperimentConfig, project_root: Path) -> tuple[Path, RunInfo]:
    """A fresh run folder named by the time it started."""
    name = time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = experiment_dir(config, project_root) / name
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = experiment_dir(config, project_root) / f"{name}-{suffix}"
    info = RunInfo(run_dir.name, config.experiment, config.fingerprint(), None, "running", time.time(), current_owner())
    info.save(run_dir)
    return run_dir, info


def effective_status(recorded: dict[str, Any]) -> str:
    """The status of a run as ``run.json`` (a dict) records it, with ``running`` read as ``crashed``
    where the owner is known to be gone; ``unknown`` where no status is recorded."""
    status = recorded.get("status") or "unknown"
    return "crashed" if status == "running" and owner_gone(recorded.get("owner")) else status


def run_to_resume(config: ExperimentConfig, project_root: Path, name: str | None) -> tuple[Path, RunInfo]:
    """The run to continue (see :func:`find_run_to_resume`), claimed by this process: status
    ``running`` again, this process its owner."""
    run_dir, info = find_run_to_resume(config, project_root, name)
    info.status, info.owner = "running", current_owner()
    info.save(run_dir)
    return run_dir, info


def find_run_to_resume(config: ExperimentConfig, project_root: Path, name: str | None) -> tuple[Path, RunInfo]:
    """The named run, or the newest unfinished run of the experiment that no other live process
    runs; its config must match. Nothing is written."""
    runs = experiment_dir(config, project_root)
    if name is not None:
        candidates = [runs / name]
    else:
        candidates = sorted(runs.glob("*/" + RUN_FILE), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates = [p.parent for p in candidates if _resumable(_load(p.parent))]
    if not candidates or not (candidates[0] / RUN_FILE).is_file():
        wanted = f"run '{name}'" if name else "unfinished run"
        raise ResumeError(f"--resume: no {wanted} of experiment '{config.experiment}' under {runs}")
    run_dir = candidates[0]
    info = _load(run_dir)
    if _run_elsewhere(info):
        owner = info.owner or {}
        raise ResumeError(f"--resume: run '{info.name}' is still running (pid {owner.get('pid')} on "
                          f"{owner.get('host')}): stop that process first")
    if info.config_fingerprint != config.fingerprint():
        raise ResumeError(
            f"--resume: run '{info.name}' was made with another config (fingerprint {info.config_fingerprint}, "
            f"now {config.fingerprint()}); resume with the same config and overrides, or start a new run"
        )
    return run_dir, info


def _resumable(info: RunInfo) -> bool:
    return info.status != "finished" and not _run_elsewhere(info)


def _run_elsewhere(info: RunInfo) -> bool:
    """Whether another live process owns the run (this process's own earlier run does not count)."""
    if info.status != "running" or not info.owner or owner_gone(info.owner):
        return False
    return info.owner != current_owner()


def _load(run_dir: Path) -> RunInfo:
    return RunInfo(**json.loads((run_dir / RUN_FILE).read_text()))
