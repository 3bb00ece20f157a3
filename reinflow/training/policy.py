"""The policy trainer: one model + optimizer that applies GRPO updates to batches of samples.

``PolicyTrainer`` lives as long as a training run (in-process for ``backbone: debug``, inside a
long-lived Ray actor for ``backbone: ray``) and keeps the model, the optimizer and the LR
scheduler in memory between iterations. One ``train_step`` is one iteration's update:

1. **old_logp** — the log-probs of the sampled tokens under the weights as they are before this
   iteration's first optimizer step, at the rollout's sampling temperature
   (``config.rollout.temperature``; 1.0 when sampling was greedy), no grad. They are taken from
   epoch 0's own forward pass (detached): before the first optimizer step the weights are
   unchanged across micro-batches, so that *is* the recomputation, and it saves a forward pass.
   Where the model has active dropout (LoRA ``dropout > 0``, attention dropout) a separate
   ``eval()`` pass computes them instead. ``logprob_mismatch`` = mean ``|old_logp -
   engine_logprobs|`` over trained tokens: ~2e-7 for the ``hf`` engine in fp32 (tiny model,
   temperature 0.7; ``tests/test_policy.py`` bounds it at 1e-5).
2. For each of ``epochs_per_batch`` epochs, for each micro-batch (``train_batch.micro_batches``):
   forward right-padded with an attention mask (``padded_batch.collate``), log-probs of
   ``ids[:, 1:]`` from the hidden states at ``[:, :-1]`` (the loss mask, engine log-probs and
   targets are shifted alike), the lm_head run only on trained positions and in row chunks
   (``head_log_probs``: no ``[N, V]`` logits; the softmax kept for the backward pass where it
   fits), ``grpo.grpo_loss`` with ``normalizer`` = the whole batch's (so the micro-batch losses
   and gradients sum to the full-batch ones), backward. Then
   ``gradient_sync.sum_gradients_over_ranks`` (all-reduce SUM over ranks), clip to
   ``max_grad_norm``, AdamW step (fused), re-pack the packed linear layers. Metrics are averaged
   over epochs (``entropy``: epoch 0's, the policy that sampled).
   On CPU in fp32 every ``nn.Linear`` runs on oneDNN-packed weights (``reinflow.training.packed_linear``;
   the lm_head's forward GEMM only); the trainer re-packs them after every in-place weight change
   (optimizer step, ``load_state``, the initial broadcast). RMSNorms of the Llama/Qwen form run
   as one autograd node with a hand-written backward (``reinflow.training.fused_rms_norm``), and
   SwiGLU MLPs over packed projections as one node that keeps two of their four ``[B, L, I]``
   activations (``reinflow.training.fused_mlp``). With ``train.release_free_memory`` a step starts
   by giving the heap's freed pages back (``memory_release``): its peak holds only its own; with
   ``train.heap_mmap_threshold_bytes`` its freed activations go back at once, not into a heap that
   fragments (``memory_release.large_blocks_mapped``).
3. The LR scheduler steps **once per iteration** (per ``train_step``), not per optimizer step:
   ``warmup_iterations`` counts iterations, and the epochs of one batch share one LR.
   ``lr(i) = lr * min(1, (i + 1) / (warmup_iterations + 1))`` for the ``i``-th iteration (0-based).

LoRA (peft): only the adapter trains; the reference policy for the KL is the same model under
``disable_adapter()`` (no second copy). Full tuning keeps a frozen deep copy as reference only
when ``kl_coef > 0``. The ``kl`` metric is reported only when ``kl_coef > 0`` (otherwise no
reference is evaluated). The trainer always holds fp32 weights (``model.dtype`` is the engine's).

Distributed: with ``world_size > 1`` each rank calls ``train_step`` on a disjoint shard with the
*global* normaliser; gradients are summed over the default ``torch.distributed`` process group
(initialised by the caller, e.g. the Ray backbone), so every rank takes the single-process step;
rank 0's parameters are broadcast to the others at construction (``reinflow.training.gradient_sync``).
Additive metrics (``loss``, ``policy_loss``, ``kl``, ``entropy``, ``clip_fraction``,
``approx_kl``, ``ratio_mean``) are this rank's share: sum them over ranks. ``logprob_mismatch`` is
this rank's mean over its ``trained_tokens``; ``grad_norm`` and ``lr`` are global.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from reinflow.config import ExperimentConfig, LoraTuning
from reinflow.training import grpo
from reinflow.training.fused_mlp import fuse_mlps
from reinflow.training.fused_rms_norm import fuse_rms_norms
from reinflow.training.gradient_sync import broadcast_parameters, sum_gradients_over_ranks
from reinflow.training.head_log_probs import head_log_probs
from reinflow.training.memory_release import large_blocks_mapped, release_free_memory
from reinflow.training.packed_linear import pack_linears, repack, supported
from reinflow.training.padded_batch import PaddedBatch, collate
from reinflow.training.rng_state import rng_state, set_rng_state
from reinflow.training.train_batch import TrainSample, batch_normalizer, micro_batches

_ADAPTER = "default"


class _Warmup:
    """LR factor ``min(1, (i + 1) / (warmup + 1))`` for iteration ``i`` (a class, so the scheduler's
    state dict records it)."""

    def __init__(self, warmup_iterations: int) -> None:
        self.warmup_iterations = warmup_iterations

    def __call__(self, iteration: int) -> float:
        return min(1.0, (iteration + 1) / (self.warmup_iterations + 1))


class PolicyTrainer:
    """The model, optimizer and LR scheduler of one training run; see the module docstring."""

    def __init__(self, config: ExperimentConfig, model_folder: Path, *, rank: int = 0, world_size: int = 1,
                 device: str | torch.device | None = None) -> None:
        from transformers import AutoModelForCausalLM

        self.config, self.train = config, config.train
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.temperature = config.rollout.temperature or 1.0
        torch.manual_seed(self.train.seed)  # LoRA initialisation
        # read, not memory-mapped: the optimizer writes every weight, and a mapped file's pages would stay
        # resident beside those copies (+0.5 GB of RSS for the built-in model)
        model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, disable_mmap=True).to(self.device)
        self.model, self.reference = _prepare(model, config)
        head = self.model.get_output_embeddings()
        if not isinstance(head, nn.Linear) or head.bias is not None:
            raise ValueError(
                f"the trainer needs a bias-free nn.Linear lm_head, got {type(head).__name__}"
                f"{' with a bias' if isinstance(head, nn.Linear) else ''}; LoRA on the lm_head is not "
                "supported: remove 'lm_head' from model.tuning.target_modules"
            )
        self.model.train()
        if self.train.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        fuse_rms_norms(self.model)
        self._packed = pack_linears(self.model, self.train.micro_batch_tokens, forward_only=head) if supported(self.model) else []
        fuse_mlps(self.model)  # after packing: it fuses MLPs whose projections are packed
        self.parameters = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(  # fused: one kernel for all tensors, ~4x faster on CPU
            list(self.parameters.values()), lr=self.train.lr, weight_decay=self.train.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _Warmup(self.train.warmup_iterations))
        self._dropout = _has_dropout(self.model)
        self._state_readers: list[Callable[[], object]] = []  # hold_state: wait for these before changing it
        if world_size > 1:
            broadcast_parameters(self.parameters.values())
            repack(self._packed)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.config.model.tuning, LoraTuning)

    # ---- the update ---------------------------------------------------------------------------

    def train_step(
        self, samples: list[TrainSample], normalizer: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        """One iteration's GRPO update on ``samples`` (this rank's shard); returns metrics.

        ``on_progress(done, total)`` is called after each micro-batch's backward pass.
        ``normalizer``: the loss normaliser of the whole batch over all ranks (see
        ``train_batch.load_train_batch``); ``None`` (single process only) uses these samples' own.
        When it is 0 (nothing in the batch can train) no optimizer step is taken; the LR
        scheduler still advances (it counts iterations).
        """
        started = time.perf_counter()
        if self.train.release_free_memory:  # the heap pages freed since: this step's peak holds only its own
            release_free_memory()
        normalizer = self._resolve_normalizer(samples, normalizer)
        lr = self.scheduler.get_last_lr()[0]
        batches = [collate(mb, self.device) for mb in micro_batches(samples, self.train.micro_batch_tokens)]
        metrics: dict[str, float] = {}
        if normalizer > 0:
            with large_blocks_mapped(self.train.heap_mmap_threshold_bytes):
                metrics = self._epochs(batches, normalizer, on_progress)
        with warnings.catch_warnings():  # an iteration without an optimizer step still advances the LR
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        seconds = time.perf_counter() - started
        tokens = sum(mb.tokens for mb in batches) * (self.train.epochs_per_batch if normalizer > 0 else 0)
        return metrics | {
            "lr": lr,
            "trained_tokens": float(sum(int(mb.loss_mask.sum()) for mb in batches)),
            "update_seconds": seconds,
            "update_tokens_per_second": tokens / seconds,
        }

    def _resolve_normalizer(self, samples: list[TrainSample], normalizer: float | None) -> float:
        if normalizer is not None:
            return float(normalizer)
        if self.world_size > 1:
            raise ValueError("train_step with world_size > 1 needs the global normalizer of the whole batch")
        return float(batch_normalizer(samples, self.train.loss_aggregation))

    def _epochs(
        self, batches: list[PaddedBatch], normalizer: float, on_progress: Callable[[int, int], None] | None = None
    ) -> dict[str, float]:
        """All epochs over the micro-batches; metrics averaged over epochs (entropy: epoch 0)."""
        old = [self._score(mb) for mb in batches] if self._dropout else [None] * len(batches)
        refs = [self._reference_logp(mb) for mb in batches] if self.train.kl_coef > 0 else [None] * len(batches)
        totals: dict[str, float] = {}
        mismatch = [0.0, 0]
        for epoch in range(self.train.epochs_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            for index, mb in enumerate(batches):
                logp, entropy = self._logp(self.model, mb, with_entropy=epoch == 0)
                if old[index] is None:
                    old[index] = logp.detach()
                if epoch == 0:
                    _add_mismatch(mismatch, old[index], mb)
                loss, parts = grpo.grpo_loss(
                    logp, old[index], mb.advantages, mb.loss_mask,
                    clip_ratio=self.train.clip_ratio, clip_ratio_high=self.train.clip_ratio_high,
                    kl_coef=self.train.kl_coef, ref_logp=refs[index],
                    aggregation=self.train.loss_aggregation, normalizer=normalizer, entropy=entropy,
                    behaviour_logp=mb.engine_logp, importance_sampling_cap=self.train.importance_sampling_cap,
                )
                loss.backward()
                _accumulate(totals, {"loss": loss.detach()} | parts)
                if on_progress is not None:
                    on_progress(epoch * len(batches) + index + 1, self.train.epochs_per_batch * len(batches))
            grad_norm = self._optimizer_step()
            _accumulate(totals, {"grad_norm": grad_norm})
        epochs = self.train.epochs_per_batch
        metrics = {key: value / (1 if key == "entropy" else epochs) for key, value in totals.items()}
        metrics["logprob_mismatch"] = mismatch[0] / max(mismatch[1], 1)
        return metrics

    def _optimizer_step(self) -> Tensor:
        """Sum the gradients over ranks, clip, step; returns the pre-clip global grad norm."""
        sum_gradients_over_ranks(list(self.parameters.values()), self.world_size)
        grad_norm = nn.utils.clip_grad_norm_(list(self.parameters.values()), self.train.max_grad_norm)
        self._release_state()
        self.optimizer.step()
        repack(self._packed)
        return grad_norm

    # ---- log-probs ----------------------------------------------------------------------------

    def _logp(self, model: nn.Module, mb: PaddedBatch, with_entropy: bool,
              temperature: float | None = None) -> tuple[Tensor, Tensor | None]:
        """``(logp [B, L-1], entropy [B, L-1] | None)`` of the targets at the sampling temperature
        (or ``temperature``); 0 at untrained positions. The lm_head runs only on the ``N`` trained positions
        (``head_log_probs``: the ``[N, V]`` probabilities are kept only when they fit its budget)."""
        hidden = model.get_decoder()(
            input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False
        ).last_hidden_state  # [B, L, H]
        selected = hidden[:, :-1][mb.loss_mask]  # [N, H]
        head = model.get_output_embeddings()
        token_logp, token_entropy = head_log_probs(
            selected, head.weight, mb.targets[mb.loss_mask], temperature or self.temperature, with_entropy,
            saved_bytes=self.train.head_saved_bytes,
            packed_weight=getattr(head, "packed", None),  # a PackedLinear's: the forward GEMM on oneDNN
        )
        logp = torch.zeros(mb.loss_mask.shape, dtype=torch.float32, device=self.device)
        logp = logp.masked_scatter(mb.loss_mask, token_logp)
        if not with_entropy:
            return logp, None
        return logp, torch.zeros_like(logp).masked_scatter(mb.loss_mask, token_entropy)

    @torch.no_grad()
    def _score(self, mb: PaddedBatch) -> Tensor:
        """``old_logp [B, L-1]`` from a separate pass without dropout (only where dropout is active)."""
        self.model.eval()
        logp, _ = self._logp(self.model, mb, with_entropy=False)
        self.model.train()
        return logp

    @torch.no_grad()
    def _reference_logp(self, mb: PaddedBatch) -> Tensor:
        """``ref_logp [B, L-1]`` under the reference policy (base without adapter, or the frozen copy)."""
        if self.is_lora:
            self.model.eval()
            with self.model.disable_adapter():
                logp, _ = self._logp(self.model, mb, with_entropy=False)
            self.model.train()
            return logp
        logp, _ = self._logp(self.reference, mb, with_entropy=False)
        return logp

    # ---- weights for the engine, checkpoint state ---------------------------------------------

    def log_probs(self, mb: PaddedBatch, temperature: float) -> Tensor:
        """``logp [B, L-1]`` of ``mb``'s targets at ``temperature`` under the trained model, with grad;
        0 at untrained positions (the warm start's cross-entropy: ``reinflow.training.warmup``)."""
        return self._logp(self.model, mb, with_entropy=False, temperature=temperature)[0]

    def weights_changed(self) -> None:
        """Call after changing the trainable weights in place outside ``train_step`` (e.g. another
        optimizer's step): re-packs the packed linear layers."""
        repack(self._packed)

    def close(self) -> None:
        """Nothing to release: an in-process trainer holds only memory (``Policy.close``)."""

    @torch.no_grad()
    def engine_weights(self) -> dict[str, Tensor]:
        """The full policy's weights under the plain model's names, for ``HFEngine.load_weights``.

        Full tuning: the model's state dict (views of the live weights: hand them over before the
        next step). LoRA: every adapted layer's ``W + scale * B @ A`` (peft's
        ``get_delta_weight``), computed into new tensors; the trainable model is not touched.
        """
        if not self.is_lora:
            return dict(self.model.state_dict())
        from peft.tuners.lora import LoraLayer

        base = self.model.get_base_model()
        weights = {
            name.replace(".base_layer.", "."): tensor
            for name, tensor in base.state_dict().items()
            if ".lora_" not in name
        }
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                key = f"{name}.weight"
                weights[key] = weights[key] + module.get_delta_weight(_ADAPTER)
        return weights

    def engine_weights_later(self) -> Callable[[], dict[str, Tensor]]:
        """:meth:`engine_weights` now (views of the live weights under full tuning: ``hold_state``
        them until read)."""
        weights = self.engine_weights()
        return lambda: weights

    def state(self) -> dict:
        """Everything a checkpoint needs to resume exactly: ``weights`` (trainable parameters by
        name: all of them, or the LoRA adapter), ``optimizer``, ``scheduler`` and ``rng`` (python,
        numpy, torch). Tensors are views of the live state: write them before the next step, or
        ``hold_state`` them."""
        return {
            "weights": {name: p.detach() for name, p in self.parameters.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
        }

    def hold_state(self, until: Callable[[], object]) -> None:
        """Call ``until()`` before the next in-place change of what ``state()`` handed out (the next
        optimizer step, ``load_state``): a background checkpoint write reads those views meanwhile."""
        self._state_readers.append(until)

    def _release_state(self) -> None:
        """Wait for every reader ``hold_state`` registered; the state may change after this."""
        while self._state_readers:
            self._state_readers.pop(0)()

    def load_state(self, state: dict) -> None:
        """Restore what ``state()`` returned (from this or an identically configured trainer)."""
        weights = state["weights"]
        if set(weights) != set(self.parameters):
            missing, unexpected = set(self.parameters) - set(weights), set(weights) - set(self.parameters)
            raise ValueError(
                f"checkpoint weights do not fit this trainer: missing={sorted(missing)[:5]} "
                f"unexpected={sorted(unexpected)[:5]} (was it written with other model or tuning settings?)"
            )
        self._release_state()
        with torch.no_grad():
            for name, p in self.parameters.items():
                p.copy_(weights[name])
        repack(self._packed)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])


# ----------------------------------------------------------------------------- helpers


def _prepare(model: nn.Module, config: ExperimentConfig) -> tuple[nn.Module, nn.Module | None]:
    """``(trainable model, reference model or None)`` for the config's tuning."""
    tuning = config.model.tuning
    if isinstance(tuning, LoraTuning):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=tuning.rank, lora_alpha=tuning.alpha, lora_dropout=tuning.dropout,
                          target_modules=list(tuning.target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, lora), None
    reference = None
    if config.train.kl_coef > 0:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    return model, reference


def _has_dropout(model: nn.Module) -> bool:
    """Whether training-mode forwards are random: a dropout module or attention dropout above 0."""
    modules = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    return modules or float(model.config.to_dict().get("attention_dropout", 0.0)) > 0


def _add_mismatch(acc: list, old_logp: Tensor, mb: PaddedBatch) -> None:
    """Add ``Σ |old_logp - engine_logp|`` over trained tokens and their count to ``acc``."""
    acc[0] += float((old_logp - mb.engine_logp).abs()[mb.loss_mask].sum())
    acc[1] += int(mb.loss_mask.sum())


def _accumulate(totals: dict[str, float], values: dict[str, Tensor]) -> None:
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + float(value)
