"""Prefect task: normalise one split's raw rows and write them as Parquet shards + a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from reinflow.data.normalize import normalize_rows, row_format
from reinflow.data.shards import ShardSet, load_manifest, write_shards
from reinflow.data.sources import RawFile, Source, iter_file_rows
from tasks import ModuleSource
from tasks.progress import count_progress

CACHE_POLICY = INPUTS + TASK_SOURCE + ModuleSource(
    modules=("reinflow.data.sources", "reinflow.data.normalize", "reinflow.data.shards")
)


@task(name="shard-split", task_run_name="shard-{split}", persist_result=True, cache_policy=CACHE_POLICY)
def shard_split(
    source: Source,
    split: str,
    raw: RawFile,
    path: str,
    shard_size: int,
    max_question_chars: int,
    project_root: str,
) -> ShardSet:
    """Normalise ``raw``'s rows into ``<path>/<split>/part-NNNNN.parquet``; return the manifest path
    and sha256.

    ``raw.sha256`` is part of the inputs, so new raw content means new shards.
    """
    fmt = row_format(source, split, max_question_chars, Path(project_root))
    outcomes = normalize_rows(iter_file_rows(Path(raw.path)), fmt)
    with count_progress(f"shard {split}", raw.rows) as on_progress:
        shard_set = write_shards(outcomes, Path(path), split, shard_size, fmt.source_description, on_progress)
    log_manifest(load_manifest(Path(path), split))
    return shard_set


def log_manifest(manifest: dict[str, Any]) -> None:
    """Log a written split's row and shard counts, and its skipped rows by reason with examples."""
    logger = get_run_logger()
    split = manifest["split"]
    logger.info("%s: %d tasks in %d shards", split, manifest["rows"], len(manifest["shards"]))
    if manifest["skipped_total"]:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in manifest["skipped"].items())
        logger.warning(
            "%s: skipped %d of %d rows (%s)", split, manifest["skipped_total"], manifest["rows_read"], reasons
        )
        for skip in manifest["skipped_examples"]:
            logger.warning("%s: row %d skipped, %s: %s", split, skip["row_index"], skip["reason"], skip["detail"])
