"""The evaluation flow: held-out pass@1 (greedy) and pass@k (sampled) of a checkpoint or the base model.

Run on its own (``reinflow eval``), or by the ``evaluate`` deployment when a ``train`` flow run
completes: with no checkpoint given it takes the newest checkpoint of the experiment's newest run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.prepare_data import prepare_data
from reinflow.run.checkpoint import latest_checkpoint, read_checkpoint
from reinflow.config import load_config
from reinflow.run.evaluation import evaluate_policy
from reinflow.judging.judge import load_judge
from reinflow.run.rollout_runtime import runtime_for
from reinflow.run.run_state import experiment_dir
from reinflow.run.session import create_policy
from reinflow.config.models import resolve_model


@flow(name="evaluate")
def evaluate(config_path: str, overrides: list[str] | None = None, checkpoint: str | None = None,
             pass_k: int | None = None, base_model: bool = False, project_root: str = ".") -> dict[str, Any]:
    """Evaluate ``checkpoint`` (default: the experiment's newest checkpoint; ``base_model``: none)."""
    root = Path(project_root).resolve()
    config = load_config(root / config_path, overrides or [])
    prepare_data(config.data, project_root=str(root))
    runtime = runtime_for(config, root)
    source = "base model" if base_model else _load_checkpoint(runtime, config, root, checkpoint)
    output = experiment_dir(config, root) / "evaluations" / time.strftime("eval-%Y%m%d-%H%M%S")
    metrics = evaluate_policy(runtime, load_judge(config.judge, root), root / config.data.path, output,
                              pass_k or config.train.eval_pass_k)
    get_run_logger().info("%s: pass@1 %.3f [%.3f, %.3f]", source, metrics["pass_at_1"],
                          metrics["pass_at_1_ci_low"], metrics["pass_at_1_ci_high"])
    return {"evaluated": source, "output": str(output), **metrics}


def _load_checkpoint(runtime: Any, config: Any, root: Path, checkpoint: str | None) -> str:
    """Load a checkpoint's weights into the engine; returns what was loaded."""
    path = Path(checkpoint) if checkpoint else _newest_checkpoint(config, root)
    if path is None:
        return "base model (no checkpoint found)"
    state, _ = read_checkpoint(path, fingerprint=config.fingerprint(), allow_config_change=True)
    policy = create_policy(config.model_copy(update={"backbone": "debug"}), resolve_model(config.model.path))
    policy.load_state(state)
    runtime.engine.load_weights(policy.engine_weights())
    return str(path)


def _newest_checkpoint(config: Any, root: Path) -> Path | None:
    runs = sorted(experiment_dir(config, root).glob("*/checkpoints"), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in runs:
        found = latest_checkpoint(folder)
        if found is not None:
            return found
    return None
