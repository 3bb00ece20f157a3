"""What each page asks for, answered from the run folders through the caches: the runs overview
(runs, episode sets, reward curves; polled by the page), an iteration's episode table, one
episode in full, and two episode sets side by side for one task. Plain dicts, ready for JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from reinflow.logview import curve, episodes
from reinflow.logview.cache import FileCache
from reinflow.logview.runs import (
    EpisodeSet, NotFound, RunFolder, RunSettings, episode_sets, find_run, find_set, list_runs, read_run_settings,
    run_status,
)
from reinflow.logview.settings import LogviewSettings
from reinflow.logview.tokens import TokenTexts


class Viewer:
    """The logview's data, for one runs folder."""

    def __init__(self, settings: LogviewSettings) -> None:
        self.runs_dir = Path(settings.runs_dir)
        self.tables = FileCache(settings.cached_tables)
        self.summaries = FileCache(settings.cached_summaries)
        self.stats = FileCache(settings.cached_stats)
        self.tokens = TokenTexts()

    # ------------------------------------------------------------------ pages

    def overview(self) -> dict[str, Any]:
        """Every run with its status, episode sets (with their statistics) and reward curve."""
        return {"runs_dir": str(self.runs_dir), "runs": [self._run_overview(run) for run in list_runs(self.runs_dir)]}

    def table(self, run_id: str, key: str, show: str = "all", sort: str | None = None, descending: bool = False,
              task: str = "") -> dict[str, Any]:
        """The episode table of one set, filtered and sorted, with the count each filter keeps."""
        run, episode_set, settings = self._locate(run_id, key)
        rows = self._summary(episode_set, settings)
        return {
            "run": run.run_id,
            "set": self._set_info(episode_set, settings),
            "rows": episodes.select(rows, show, sort, descending, task),
            "counts": episodes.counts(rows),
        }

    def episode(self, run_id: str, key: str, episode_id: str) -> dict[str, Any]:
        """One episode: its table row, task, conversation and token samples."""
        run, episode_set, settings = self._locate(run_id, key)
        summary = self._index(episode_set, settings).get(episode_id)
        if summary is None:
            raise NotFound(f"no episode '{episode_id}' in {run.run_id} {episode_set.key}")
        row = self._full_row(episode_set, summary["row"])
        token_problem = None if settings.model_path is None else self.tokens.problem(settings.model_path)
        return {
            "run": run.run_id,
            "set": {"key": episode_set.key, "label": episode_set.label},
            "episode": summary,
            "question": row["question"],
            "reference_answer": row["reference_answer"],
            "final_answer": row["final_answer"],
            "conversation": episodes.conversation(row["messages"], row["turns"]),
            "samples": episodes.samples(row, lambda ids: self.tokens.texts(settings.model_path, ids)),
            "token_problem": token_problem or settings.problem,
        }

    def compare(self, run_id: str, a: str, b: str, task: str | None = None) -> dict[str, Any]:
        """The episodes of ``task`` in sets ``a`` and ``b`` (default task: the first both have)."""
        run = find_run(self.runs_dir, run_id)
        settings = self._settings(run)
        sets = [find_set(run, key) for key in (a, b)]
        summaries = [self._summary(s, settings) for s in sets]
        in_b = {row["task_id"] for row in summaries[1]}
        common = list(dict.fromkeys(row["task_id"] for row in summaries[0] if row["task_id"] in in_b))
        chosen = task if task is not None else (common[0] if common else None)
        return {
            "run": run.run_id,
            "common_tasks": common,
            "task": chosen,
            "sides": [
                {"set": self._set_info(s, settings), "episodes": self._task_episodes(s, rows, chosen)}
                for s, rows in zip(sets, summaries, strict=True)
            ],
        }

    # ------------------------------------------------------------------ pieces

    def _run_overview(self, run: RunFolder) -> dict[str, Any]:
        settings = self._settings(run)
        sets = episode_sets(run)
        stats = {s.key: self._stats(s, settings) for s in sets}
        train = [(s.iteration, stats[s.key]) for s in sets if s.kind == "train" and s.judged]
        greedy = [(s.iteration, stats[s.key]) for s in sets if s.key.endswith("_greedy") and s.judged]
        status = run_status(run)
        return {
            "id": run.run_id,
            "experiment": run.experiment,
            "name": run.name,
            "status": status.get("status"),
            "created": status.get("created"),
            "model": settings.model_path,
            "problem": settings.problem,
            "sets": [self._set_info(s, settings, stats[s.key]) for s in sets],
            "curve": curve.curve_points(train, greedy),
        }

    def _set_info(self, episode_set: EpisodeSet, settings: RunSettings, stats: dict | None = None) -> dict[str, Any]:
        return {
            "key": episode_set.key,
            "label": episode_set.label,
            "kind": episode_set.kind,
            "iteration": episode_set.iteration,
            "judged": episode_set.judged,
            "stats": stats if stats is not None else self._stats(episode_set, settings),
        }

    def _locate(self, run_id: str, key: str) -> tuple[RunFolder, EpisodeSet, RunSettings]:
        run = find_run(self.runs_dir, run_id)
        return run, find_set(run, key), self._settings(run)

    def _settings(self, run: RunFolder) -> RunSettings:
        path = run.path / "experiment.yaml"
        if not path.is_file():
            return read_run_settings(run)
        return self.stats.get(path, "settings", lambda: read_run_settings(run))

    def _summary(self, episode_set: EpisodeSet, settings: RunSettings) -> list[dict[str, Any]]:
        return self.summaries.get(
            episode_set.path, ("summary", settings.normalize_std),
            lambda: episodes.read_summary(episode_set.path, settings.normalize_std),
        )

    def _index(self, episode_set: EpisodeSet, settings: RunSettings) -> dict[str, dict[str, Any]]:
        rows = self._summary(episode_set, settings)
        return self.summaries.get(episode_set.path, ("index", settings.normalize_std),
                                  lambda: {row["episode_id"]: row for row in rows})

    def _stats(self, episode_set: EpisodeSet, settings: RunSettings) -> dict[str, Any]:
        return self.stats.get(episode_set.path, "stats", lambda: curve.set_stats(self._summary(episode_set, settings)))

    def _full_row(self, episode_set: EpisodeSet, row: int) -> dict[str, Any]:
        path = episode_set.path
        metadata = self.summaries.get(path, "metadata", lambda: pq.read_metadata(path))
        group, start = episodes.row_group_of(metadata, row)
        table = self.tables.get(path, ("group", group), lambda: pq.ParquetFile(path).read_row_group(group))
        return episodes.full_row(table, row - start)

    def _task_episodes(self, episode_set: EpisodeSet, rows: list[dict], task: str | None) -> list[dict[str, Any]]:
        chosen = [row for row in rows if row["task_id"] == task]
        shown = []
        for row in chosen:
            full = self._full_row(episode_set, row["row"])
            shown.append(row | {"final_answer": full["final_answer"], "reply": episodes.last_reply(full["messages"])})
        return shown
