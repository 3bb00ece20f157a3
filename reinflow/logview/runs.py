"""What is on disk: the runs under a runs folder and the episode sets of each run.

A run is ``<runs_dir>/<experiment>/<run>/`` with a ``run.json`` (``reinflow.run.run_state``). Its
episode sets are the training iterations (``judged/iter_N.parquet``, or ``rollouts/iter_N.parquet``
while the judge has not finished) and the held-out evaluations (``eval/iter_N/greedy*.parquet``,
``sampled*.parquet``; the same tasks every time, so two evaluations compare task by task). Every
file is published atomically by the writer, so a listed file is complete.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from reinflow.config import TrainConfig, load_config
from reinflow.config.errors import ConfigError
from reinflow.errors import ReinflowError
from reinflow.run.run_state import RUN_FILE, effective_status

log = logging.getLogger(__name__)

_ITER = re.compile(r"^iter_(\d+)$")
EVAL_KINDS = ("greedy", "sampled")


class NotFound(ReinflowError):
    """A run, episode set or episode the request names is not on disk."""


@dataclass(frozen=True)
class RunFolder:
    """One run folder."""

    experiment: str
    name: str
    path: Path

    @property
    def run_id(self) -> str:
        return f"{self.experiment}/{self.name}"


@dataclass(frozen=True)
class EpisodeSet:
    """One Parquet file of episodes: a training iteration or an evaluation."""

    key: str  # iter_3 | eval_2_greedy | eval_2_sampled
    kind: str  # train | eval
    iteration: int
    label: str
    path: Path
    judged: bool


@dataclass(frozen=True)
class RunSettings:
    """What the viewer needs from the run's config (``experiment.yaml``)."""

    model_path: str | None  # None: the config could not be read (``problem`` says why)
    normalize_std: bool
    problem: str | None = None


def list_runs(runs_dir: Path) -> list[RunFolder]:
    """Every run folder (one holding ``run.json``), newest name first within each experiment."""
    found = [RunFolder(p.parent.parent.name, p.parent.name, p.parent) for p in runs_dir.glob(f"*/*/{RUN_FILE}")]
    newest_first = sorted(found, key=lambda run: run.name, reverse=True)  # names are run-<date>-<time>
    return sorted(newest_first, key=lambda run: run.experiment)


def find_run(runs_dir: Path, run_id: str) -> RunFolder:
    """The run named ``<experiment>/<run>``, looked up among the listed runs (no path is built from it)."""
    for run in list_runs(runs_dir):
        if run.run_id == run_id:
            return run
    raise NotFound(f"no run '{run_id}' under {runs_dir}")


def run_status(run: RunFolder) -> dict:
    """``run.json`` as written by the training run ({} when unreadable), its status as a reader sees
    it: ``crashed`` where it says ``running`` but its owner process is gone (``run_state.effective_status``)."""
    try:
        recorded = json.loads((run.path / RUN_FILE).read_text())
    except (OSError, ValueError) as error:
        log.warning("logview: cannot read %s: %s", run.path / RUN_FILE, error)
        return {}
    return recorded | {"status": effective_status(recorded)} if isinstance(recorded, dict) else {}


def episode_sets(run: RunFolder) -> list[EpisodeSet]:
    """Training iterations in order, then evaluations in order (greedy before sampled)."""
    sets = [_train_set(run, iteration) for iteration in _iterations(run.path / "rollouts", run.path / "judged")]
    for folder in sorted(_numbered(run.path / "eval"), key=lambda item: item[0]):
        sets.extend(_eval_sets(*folder))
    return [s for s in sets if s is not None]


def find_set(run: RunFolder, key: str) -> EpisodeSet:
    """The run's episode set called ``key``."""
    for episode_set in episode_sets(run):
        if episode_set.key == key:
            return episode_set
    raise NotFound(f"run '{run.run_id}' has no episode set '{key}'")


def _iterations(*folders: Path) -> list[int]:
    return sorted({number for folder in folders for number, _ in _numbered(folder, ".parquet")})


def _numbered(folder: Path, suffix: str = "") -> list[tuple[int, Path]]:
    """``(N, path)`` of each ``iter_N<suffix>`` entry of ``folder``."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.name.endswith(suffix):
            match = _ITER.match(path.name[: len(path.name) - len(suffix)] if suffix else path.name)
            if match:
                found.append((int(match.group(1)), path))
    return found


def _train_set(run: RunFolder, iteration: int) -> EpisodeSet | None:
    judged = run.path / "judged" / f"iter_{iteration}.parquet"
    rollout = run.path / "rollouts" / f"iter_{iteration}.parquet"
    path = judged if judged.is_file() else rollout
    if not path.is_file():
        return None
    return EpisodeSet(f"iter_{iteration}", "train", iteration, f"iteration {iteration}", path, path == judged)


def _eval_sets(iteration: int, folder: Path) -> list[EpisodeSet | None]:
    sets = []
    for kind in EVAL_KINDS:
        judged, rollout = folder / f"{kind}_judged.parquet", folder / f"{kind}.parquet"
        path = judged if judged.is_file() else rollout
        if path.is_file():
            label = f"eval @{iteration} {kind}"
            sets.append(EpisodeSet(f"eval_{iteration}_{kind}", "eval", iteration, label, path, path == judged))
    return sets


def read_run_settings(run: RunFolder) -> RunSettings:
    """The run's model and advantage settings from its ``experiment.yaml``; a run without a readable
    one is still shown (token ids without text, advantages with the default normalisation)."""
    path = run.path / "experiment.yaml"
    default_std = TrainConfig().normalize_advantage_std
    if not path.is_file():
        return RunSettings(None, default_std, f"{path} not written yet")
    try:
        config = load_config(path)
    except ConfigError as error:
        log.warning("logview: %s", error)
        return RunSettings(None, default_std, str(error))
    return RunSettings(config.model.path, config.train.normalize_advantage_std)
