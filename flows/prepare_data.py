"""The data preparation flow: for each split, download the raw rows, then normalise and shard them."""

from __future__ import annotations

import flows  # noqa: F401, I001  (first: applies the environment defaults; see flows/__init__.py)

from pathlib import Path
from typing import Any

from prefect import flow

from reinflow.config import DataConfig, load_config
from reinflow.data.shards import require_rows, shards_intact, summarize
from reinflow.data.sources import raw_file_intact, source_fingerprint, splits_to_prepare
from tasks import run_cached
from tasks.download import download_split
from tasks.shard import shard_split


@flow(name="prepare-data")
def prepare_data(data: DataConfig | dict[str, Any], project_root: str = ".") -> dict[str, dict[str, Any]]:
    """Download every split of the data source and write it as Parquet shards under ``data.path``.

    Returns ``{split: {rows, skipped, skipped_by_reason, shards, manifest}}`` (counts, and the
    manifest's path); a split with no usable row is a one-line DataSourceError. Both steps are
    cached on their inputs (a local file's content included) and code; a step whose output is gone
    or changed on disk runs again.
    """
    data = DataConfig.model_validate(data)
    root = Path(project_root).resolve()
    path = root / data.path
    summary: dict[str, dict[str, Any]] = {}
    for split in splits_to_prepare(data):
        fingerprint = source_fingerprint(data.source, split, root)
        raw = run_cached(download_split, root, raw_file_intact, data.source, split, str(path), str(root), fingerprint)
        run_cached(shard_split, root, shards_intact, data.source, split, raw, str(path), data.shard_size,
                   data.max_question_chars, str(root))
        require_rows(path, split)
        summary[split] = summarize(path, split)
    return summary


@flow(name="prepare-experiment-data")
def prepare_experiment_data(config_path: str, overrides: list[str] | None = None,
                            project_root: str = ".") -> dict[str, dict[str, Any]]:
    """``prepare_data`` for the data section of an experiment config (the ``prepare-data`` deployment).

    ``config_path`` is relative to ``project_root``; ``overrides`` are dotted ``key=value`` strings.
    """
    root = Path(project_root).resolve()
    config = load_config(root / config_path, overrides or [])
    return prepare_data(config.data, project_root=str(root))
