"""Prefect tasks, one verb per file, each a thin wrapper over a reinflow function.

Task results persist under ``<project_root>/.prefect-results``, keyed by the task's inputs, its
source and the source of the reinflow modules it calls (``INPUTS + TASK_SOURCE + ModuleSource``),
so editing the library invalidates what it computed. A result names files (with their sha256), and
a cached result is only as good as those files: :func:`run_cached` checks them and, where they are
gone or were overwritten (e.g. by a run with other inputs), runs the task again and replaces its
cache entry.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

RESULTS_DIR_NAME = ".prefect-results"

R = TypeVar("R")


@dataclass
class ModuleSource(CachePolicy):
    """Cache key part: the source code of the named modules (TASK_SOURCE sees only the task's own)."""

    modules: tuple[str, ...] = ()

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        """A hash of the modules' source text."""
        sources = [inspect.getsource(importlib.import_module(name)) for name in self.modules]
        return hash_objects(*sources, raise_on_failure=True)


def run_cached(task: Task[..., R], project_root: Path, output_intact: Callable[[R], bool], *args: Any) -> R:
    """Call a task with its result cached in the project's result folder; where the result
    describes files that are no longer on disk as it says, call it again with a refreshed cache."""
    cached = task.with_options(result_storage=Path(project_root) / RESULTS_DIR_NAME)
    result = cached(*args)
    if output_intact(result):
        return result
    get_run_logger().warning("%s: its cached output is gone or changed on disk; running it again", task.name)
    return cached.with_options(refresh_cache=True)(*args)
