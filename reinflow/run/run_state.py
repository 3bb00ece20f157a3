"""The folder of one training run and what resuming it needs.

``<tracking.run_dir>/<experiment>/<run name>/`` holds ``run.json`` (name, MLflow run id, config
fingerprint, status), ``rollouts/``, ``judged/``, ``eval/`` and ``checkpoints/``. A run resumes
from its last complete checkpoint: the iteration after it, with the data cursor saved in it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from reinflow.config import ExperimentConfig
from reinflow.errors import ReinflowError

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
    status: str  # running | finished | failed
    created: float

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
    info = RunInfo(run_dir.name, config.experiment, config.fingerprint(), None, "running", time.time())
    info.save(run_dir)
    return run_dir, info


def run_to_resume(config: ExperimentConfig, project_root: Path, name: str | None) -> tuple[Path, RunInfo]:
    """The named run, or the newest unfinished run of the experiment; its config must match."""
    runs = experiment_dir(config, project_root)
    if name is not None:
        candidates = [runs / name]
    else:
        candidates = sorted(runs.glob("*/" + RUN_FILE), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates = [p.parent for p in candidates if _load(p.parent).status != "finished"]
    if not candidates or not (candidates[0] / RUN_FILE).is_file():
        wanted = f"run '{name}'" if name else "unfinished run"
        raise ResumeError(f"--resume: no {wanted} of experiment '{config.experiment}' under {runs}")
    run_dir = candidates[0]
    info = _load(run_dir)
    if info.config_fingerprint != config.fingerprint():
        raise ResumeError(
            f"--resume: run '{info.name}' was made with another config (fingerprint {info.config_fingerprint}, "
            f"now {config.fingerprint()}); resume with the same config and overrides, or start a new run"
        )
    return run_dir, info


def _load(run_dir: Path) -> RunInfo:
    return RunInfo(**json.loads((run_dir / RUN_FILE).read_text()))
