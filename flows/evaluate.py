"""The evaluation flow: held-out pass@1 (greedy) and pass@k (sampled) of a checkpoint or the base model.

Run on its own (``reinflow eval``), or by the ``evaluate`` deployment when a ``train`` flow run
completes: with no checkpoint given it takes the newest checkpoint of the experiment's newest run.
"""

from __future__ import annotations

import flows  # noqa: F401, I001  (first: applies the environment defaults; see flows/__init__.py)

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.prepare_data import prepare_data
from reinflow.config import load_config
from reinflow.judging.judge import load_judge
from reinflow.run.checkpoint import newest_run_checkpoint
from reinflow.run.rollout_runtime import build_runtime
from reinflow.run.run_state import experiment_dir
from reinflow.run.session import load_checkpoint_weights
from tasks.evaluate import evaluate as evaluate_task
from tasks.live import live


@flow(name="evaluate")
def evaluate(config_path: str, overrides: list[str] | None = None, checkpoint: str | None = None,
             pass_k: int | None = None, base_model: bool = False, project_root: str = ".") -> dict[str, Any]:
    """Evaluate ``checkpoint`` (default: the experiment's newest checkpoint; ``base_model``: none)."""
    root = Path(project_root).resolve()
    config = load_config(root / config_path, overrides or [])
    prepare_data(config.data, project_root=str(root))
    path = None if base_model else Path(checkpoint) if checkpoint else newest_run_checkpoint(experiment_dir(config, root))
    source = str(path) if path else "base model" if base_model else "base model (no checkpoint found)"
    output = experiment_dir(config, root) / "evaluations" / time.strftime("eval-%Y%m%d-%H%M%S")
    runtime = build_runtime(config, root)
    try:
        if path is not None:
            load_checkpoint_weights(runtime, config, path)
        with live(runtime=runtime, judge=load_judge(config.judge, root)):
            metrics = evaluate_task(str(root / config.data.path), str(output), pass_k or config.train.eval_pass_k,
                                    label=Path(source).name)
    finally:
        runtime.close()
    return {"evaluated": source, "output": str(output), **metrics}
