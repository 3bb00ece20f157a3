"""The warm start of a training run (the config's ``warmup`` section), before the baseline evaluation.

1. Read the conversations: the demonstrations file (rendered for the policy's chat template under
   the rollout's limits) and/or an earlier run's successful episodes (``reinflow.data.demonstrations``);
   skipped rows are counted by reason; a source with none usable is a one-line error.
2. Fine-tune the in-process policy on them (``reinflow.training.warmup``) and hand the new weights
   to the engine.
3. Log ``warmup/loss`` per step and the totals once (``tracking.mlflow_run.log_series_once``),
   then write checkpoint ``iter_0`` (cursor 0).

Resume: any checkpoint of the run means the warm start is done (``iter_0`` is the first one
written), so a resumed run skips it. A run killed in the middle of it has no checkpoint and warms
up again from the start: the same steps on the same weights (batches are seeded by
``train.seed``), and metrics already logged are not logged again.

Only ``backbone: debug`` warm-starts: the Ray backbone's workers have no supervised step yet
(:class:`WarmupError` says so; ``preflight`` refuses the config before the run starts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reinflow.config import ExperimentConfig
from reinflow.config.warmup import RAY_UNSUPPORTED
from reinflow.data.demonstrations import DemonstrationSet, load_demonstrations, load_run_successes
from reinflow.errors import ReinflowError
from reinflow.rollout.chat_format import ChatTemplate
from reinflow.run.checkpoint import latest_checkpoint
from reinflow.run.session import TrainingSession, save_checkpoint
from reinflow.tracking.mlflow_run import log_series_once
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample
from reinflow.training.warmup import WarmupResult, supervised_fine_tune

SENTINEL = "warmup/seconds"
"""The warm start's last-logged metric: once it is in the MLflow run, its metrics are all there."""


class WarmupError(ReinflowError):
    """The warm start cannot run as configured."""


@dataclass
class WarmStart:
    """What one warm start read and did."""

    sources: list[DemonstrationSet]
    samples: int
    result: WarmupResult

    @property
    def totals(self) -> dict[str, float]:
        """The step-0 metrics: trained tokens, seconds, steps, conversations, skipped rows by reason."""
        skipped = {f"warmup/skipped/{reason}": float(count)
                   for source in self.sources for reason, count in source.skipped.items()}
        return {
            "warmup/tokens": float(self.result.trained_tokens),
            "warmup/steps": float(len(self.result.losses)),
            "warmup/conversations": float(sum(len(source.conversations) for source in self.sources)),
            "warmup/samples": float(self.samples),
            **skipped,
            SENTINEL: self.result.seconds,
        }


def warm_start_needed(session: TrainingSession) -> bool:
    """Whether the run warm-starts now: configured, and no checkpoint of the run exists yet."""
    return session.config.warmup.enabled and latest_checkpoint(session.checkpoints) is None


def warm_start_samples(config: ExperimentConfig, project_root: Path, tokenizer: object
                       ) -> tuple[list[TrainSample], list[DemonstrationSet]]:
    """The samples of every configured source (at most ``warmup.max_conversations`` conversations,
    demonstrations first) and each source's report."""
    warmup, sources = config.warmup, []
    if warmup.demonstrations is not None:
        sources.append(load_demonstrations(project_root / warmup.demonstrations, ChatTemplate(tokenizer), config.rollout))
    if warmup.from_run is not None:
        sources.append(load_run_successes(project_root / warmup.from_run, config.rollout.max_model_len))
    conversations = [(source.source, k, conversation) for source in sources
                     for k, conversation in enumerate(source.conversations)]
    samples = [
        TrainSample(token_ids=s.token_ids, loss_mask=s.loss_mask, engine_logprobs=[0.0] * len(s.token_ids),
                    advantage=0.0, episode_id=f"{name}#{k}")
        for name, k, conversation in conversations[: warmup.max_conversations] for s in conversation
    ]
    return samples, sources


def warm_start(session: TrainingSession, on_step: Callable[[int, int], None] | None = None) -> WarmStart:
    """Fine-tune the session's policy on the configured conversations and serve the new weights."""
    if not isinstance(session.policy, PolicyTrainer):
        raise WarmupError(RAY_UNSUPPORTED)
    config = session.config
    samples, sources = warm_start_samples(config, session.project_root, session.runtime.tokenizer)
    result = supervised_fine_tune(session.policy, samples, config.warmup, config.train.seed, on_step)
    session.runtime.load_policy(session.policy)
    return WarmStart(sources, len(samples), result)


def record_warm_start(session: TrainingSession, warm: WarmStart) -> Path:
    """Log the warm start's metrics (once) and write checkpoint ``iter_0``; returns its folder."""
    log_series_once(session.client, session.info.mlflow_run_id, {"warmup/loss": warm.result.losses},
                    warm.totals, SENTINEL)
    return save_checkpoint(session, 0, session.cursor)
