"""Prefect task: make one split's raw rows a local file (hub / reasoning-gym → raw.jsonl)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from reinflow.data.sources import RawFile, Source, download_raw
from tasks import ModuleSource

CACHE_POLICY = INPUTS + TASK_SOURCE + ModuleSource(modules=("reinflow.data.sources",))


@task(name="download-split", task_run_name="download-{split}", persist_result=True, cache_policy=CACHE_POLICY)
def download_split(source: Source, split: str, path: str, project_root: str, source_fingerprint: str) -> RawFile:
    """Fetch a split's raw rows (see :func:`reinflow.data.sources.download_raw`); return the file.

    ``source_fingerprint`` (the sha256 of a local source file) is not read: it is an input so the
    cache key changes when the source's content does.
    """
    raw = download_raw(source, split, Path(path), Path(project_root))
    get_run_logger().info("%s: %d raw rows in %s (sha256 %s)", split, raw.rows, raw.path, raw.sha256[:12])
    return raw
