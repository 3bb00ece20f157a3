"""The reward curve as a PNG, for users without a browser (MLflow artifact and run folder)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

CURVES = {
    "reward_mean": "reward (mean)",
    "success_rate": "success rate",
    "format_error_rate": "format-error rate",
    "eval/pass_at_1": "held-out pass@1",
}


def reward_curve_png(history: dict[str, dict[int, float]], path: Path, title: str) -> Path:
    """Plot each known metric of ``history`` ({metric: {iteration: value}}) against iteration."""
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in CURVES.items():
        points = sorted(history.get(key, {}).items())
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="o", label=label)
    axes.set_xlabel("iteration")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
