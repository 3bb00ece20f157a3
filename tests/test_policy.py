"""The policy trainer on the tiny random Llama: the shift, learning, exact micro-batch accumulation,
LoRA vs full, the KL reference, warm-up, engine hand-off and logprob agreement with the `hf`
engine, and the gradient all-reduce across two processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from reinflow.training import grpo
from reinflow.config import ExperimentConfig
from reinflow.engines.base import SamplingParams
from reinflow.engines.hf import HFEngine
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.training.head_log_probs import head_log_probs
from reinflow.training.padded_batch import collate
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample, batch_normalizer

LORA = {"type": "lora", "rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}
PROMPT = [1, 50, 51, 52, 53]
FAVOURED, DISFAVOURED = 100, 200


def make_config(tuning: dict | None = None, temperature: float = 1.0, **train) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment": "test",
        "data": {"source": {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 8, "test": 8}},
                 "path": "data/test"},
        "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent", "temperature": temperature},
        "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
        "model": {"path": TINY_RANDOM_LLAMA, "tuning": tuning or {"type": "full"}},
        "train": {"lr": 1e-3, "max_grad_norm": 100.0} | train,
    })


@pytest.fixture(scope="module")
def folder() -> Path:
    return resolve_model(TINY_RANDOM_LLAMA)


def toy_batch() -> list[TrainSample]:
    """Completions ending in FAVOURED get +1, ending in DISFAVOURED get -1; varied lengths."""
    samples = []
    for k, filler in enumerate([[7], [8, 9], [10, 11, 12], [13]]):
        for last, advantage in ((FAVOURED, 1.0), (DISFAVOURED, -1.0)):
            ids = PROMPT + filler + [last]
            mask = [0] * len(PROMPT) + [1] * (len(filler) + 1)
            samples.append(TrainSample(ids, mask, [0.0] * len(ids), advantage, f"t#{k}{last}"))
    return samples


def logp_of(trainer: PolicyTrainer, prefix: list[int], token: int) -> float:
    with torch.no_grad():
        logits = trainer.model(torch.tensor([prefix], device=trainer.device)).logits[0, -1]
    return torch.log_softmax(logits, -1)[token].item()


def test_logp_uses_the_shifted_targets_and_ignores_padding(folder):
    trainer = PolicyTrainer(make_config(temperature=0.7), folder)
    ids = [1, 30, 31, 32, 33, 34]
    short = TrainSample(ids, [0, 0, 0, 1, 0, 1], [0.0] * 6, 1.0, "a")
    long = TrainSample(list(range(1, 15)), [0] * 7 + [1] * 7, [0.0] * 14, 1.0, "b")
    mb = collate([long, short], trainer.device)  # ``short`` is right-padded
    logp, entropy = (t.cpu() for t in trainer._logp(trainer.model, mb, with_entropy=True))
    with torch.no_grad():
        full = torch.log_softmax(trainer.model(torch.tensor([ids], device=trainer.device)).logits[0] / 0.7, -1).cpu()
    # logits at position t-1 score token t; trained tokens are t = 3 and t = 5
    expected = torch.zeros(5)
    expected[2], expected[4] = full[2, ids[3]], full[4, ids[5]]
    assert mb.loss_mask[1].tolist() == [False, False, True, False, True, False, False] + [False] * 6
    torch.testing.assert_close(logp[1, :5], expected, atol=1e-5, rtol=0)
    assert (logp[1, 5:] == 0).all() and (entropy[1, :5] > 0).sum() == 2


def surrogate_loss(trainer: PolicyTrainer, samples: list[TrainSample], old: list[torch.Tensor] | None) -> tuple:
    """The batch's GRPO loss without KL term (the clipped surrogate, at the trainer's clip range and
    aggregation) under the trainer's current weights against fixed ``old`` log-probs (None: the
    current ones, i.e. before any update); returns ``(loss, logps)``."""
    batches = [collate(samples, trainer.device)]
    with torch.no_grad():
        logps = [trainer._logp(trainer.model, mb, with_entropy=False)[0] for mb in batches]
        old = old or logps
        train = trainer.train
        losses = [grpo.grpo_loss(lp, o, mb.advantages, mb.loss_mask, clip_ratio=train.clip_ratio,
                                 clip_ratio_high=train.clip_ratio_high, kl_coef=0.0,
                                 aggregation=train.loss_aggregation)[0]
                  for lp, o, mb in zip(logps, old, batches)]
    return sum(float(x) for x in losses), logps


@pytest.mark.parametrize("packed", [False, True], ids=["plain-weight", "onednn-packed-weight"])
@pytest.mark.parametrize("saved_bytes", [1 << 30, 0], ids=["probabilities-kept", "logits-recomputed"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_log_probs_equal_the_plain_computation(temperature, saved_bytes, packed):
    """Values, entropy and both gradients against plain ``log_softmax`` over full logits; N = 300
    rows spans three chunks (the last one partial); with the probabilities kept for the backward
    pass and with the logits recomputed there; with the logit GEMMs on a oneDNN-packed weight."""
    if packed and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=generator, requires_grad=True)
    weight = torch.randn(1000, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 1000, (300,), generator=generator)
    upstream = torch.randn(300, generator=generator)
    packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 300) if packed else None
    logp, entropy = head_log_probs(hidden, weight, targets, temperature, with_entropy=True, saved_bytes=saved_bytes,
                                   packed_weight=packed_weight)
    (logp * upstream).sum().backward()
    fused = (logp.detach(), entropy, hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    log_probs = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)  # [N, V]
    plain_logp = log_probs.gather(-1, targets[:, None])[:, 0]
    (plain_logp * upstream).sum().backward()
    plain_entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
    for got, want in zip(fused, (plain_logp.detach(), plain_entropy, hidden.grad, weight.grad)):
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)  # logits ~±16: matmul blocking differs
    assert head_log_probs(hidden, weight, targets, temperature, with_entropy=False, saved_bytes=1 << 30)[1].numel() == 0


def test_update_changes_parameters_lowers_the_loss_and_favours_the_rewarded_token(folder):
    trainer = PolicyTrainer(make_config(lr=3e-3), folder)
    before = {name: p.detach().clone() for name, p in trainer.parameters.items()}
    prefix = PROMPT + [7]
    gap0 = logp_of(trainer, prefix, FAVOURED) - logp_of(trainer, prefix, DISFAVOURED)
    samples = toy_batch()
    loss0, old = surrogate_loss(trainer, samples, None)
    trainer.train_step(samples)
    loss1, _ = surrogate_loss(trainer, samples, old)
    assert loss1 < loss0 - 1e-3  # the clipped surrogate against the sampling policy went down
    assert any(not torch.equal(before[n], p) for n, p in trainer.parameters.items())
    for _ in range(3):
        trainer.train_step(samples)
    gap = logp_of(trainer, prefix, FAVOURED) - logp_of(trainer, prefix, DISFAVOURED)
    assert gap > gap0 + 1.0


def assert_grads_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to fp32 summation order and batch shape: measured max |diff| per tensor is ~5e-6
    of that tensor's largest element; the bound is 2e-5 of it."""
    for name, value in expected.items():
        scale = value.abs().max().item()
        assert (actual[name] - value).abs().max().item() <= 2e-5 * scale + 1e-12, name


def test_micro_batches_sum_to_the_full_batch_gradient(folder):
    samples = toy_batch()
    grads, metrics = [], []
    for budget in (10_000, 16):  # one micro-batch vs one row per micro-batch
        trainer = PolicyTrainer(make_config(micro_batch_tokens=budget, kl_coef=0.0), folder)
        metrics.append(trainer.train_step(samples))
        grads.append({n: p.grad.clone() for n, p in trainer.parameters.items()})
    assert_grads_close(grads[1], grads[0])
    for key in ("loss", "entropy", "grad_norm", "approx_kl"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-5, abs=1e-7)
    assert metrics[0]["trained_tokens"] == batch_normalizer(samples, "token_mean") == 22


def test_head_saved_bytes_reaches_the_head_and_both_ways_give_the_same_step(folder, monkeypatch):
    import reinflow.training.policy as policy_module

    budgets = []
    real = policy_module.head_log_probs
    monkeypatch.setattr(policy_module, "head_log_probs",
                        lambda *a, **k: budgets.append(k["saved_bytes"]) or real(*a, **k))
    samples, grads, metrics = toy_batch(), [], []
    for budget in (1 << 30, 0):  # probabilities kept vs logits recomputed in the backward pass
        trainer = PolicyTrainer(make_config(head_saved_bytes=budget, kl_coef=0.0), folder)
        metrics.append(trainer.train_step(samples))
        grads.append({n: p.grad.clone() for n, p in trainer.parameters.items()})
    assert set(budgets) == {1 << 30, 0}
    assert_grads_close(grads[1], grads[0])
    for key in ("loss", "entropy", "grad_norm"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-5, abs=1e-7)

def test_full_tuning_kl_reference_and_warmup(folder):
    trainer = PolicyTrainer(make_config(kl_coef=0.5, warmup_iterations=2), folder)
    assert trainer.reference is not None
    steps = [trainer.train_step(toy_batch()) for _ in range(3)]
    # before the first step the policy is the reference (the policy's packed GEMMs round differently)
    assert abs(steps[0]["kl"]) < 1e-10
    assert steps[2]["kl"] > 1e-6
    assert [s["lr"] for s in steps] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])


def test_several_epochs_move_away_from_old_logp(folder):
    one = PolicyTrainer(make_config(epochs_per_batch=1), folder).train_step(toy_batch())
    three = PolicyTrainer(make_config(epochs_per_batch=3), folder).train_step(toy_batch())
    assert one["approx_kl"] == 0.0 and one["ratio_mean"] == pytest.approx(1.0)
    assert three["approx_kl"] > 0.0  # epochs 1 and 2 score against epoch 0's old_logp
    assert three["update_tokens_per_second"] > 0


def test_lora_trains_only_the_adapter_and_starts_at_the_reference(folder):
    trainer = PolicyTrainer(make_config(LORA, kl_coef=0.1, lr=1e-2), folder)
    assert all("lora_" in name for name in trainer.parameters)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in trainer.parameters.items()}
    first = trainer.train_step(toy_batch())
    assert first["kl"] == 0.0  # adapter B starts at zero: the policy is the reference
    for _ in range(2):
        last = trainer.train_step(toy_batch())
    assert last["kl"] > 0
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, adapter[n]) for n, p in trainer.parameters.items())


def test_lora_engine_weights_give_the_trainers_logits(folder):
    trainer = PolicyTrainer(make_config(LORA, lr=1e-2), folder)
    for _ in range(2):
        trainer.train_step(toy_batch())
    adapter = {n: p.detach().clone() for n, p in trainer.parameters.items()}
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(trainer.device).eval()
    plain.load_state_dict(trainer.engine_weights(), strict=True)
    ids = torch.tensor([PROMPT + [7, 8, 9, FAVOURED]], device=trainer.device)
    with torch.no_grad():
        expected = trainer.model.eval()(ids).logits
        torch.testing.assert_close(plain(ids).logits, expected, atol=1e-5, rtol=1e-5)
        with trainer.model.disable_adapter():
            base = trainer.model(ids).logits
    assert (expected - base).abs().max() > 1e-3  # the adapter did change the policy
    assert all(torch.equal(p, adapter[n]) for n, p in trainer.parameters.items())  # not mutated


def engine_samples(folder_or_weights, folder: Path, temperature: float) -> list[TrainSample]:
    """Sample a few completions with the real `hf` engine and turn them into training samples."""
    prompts = [[1, 9, 40, 7], [1, 300, 301, 302, 303], [1, 77, 88, 99, 111, 222]]

    async def main() -> list:
        engine = HFEngine(folder, max_model_len=128, max_batch_size=4)
        if folder_or_weights is not None:
            engine.load_weights(folder_or_weights)
        params = [SamplingParams(max_new_tokens=12, temperature=temperature, top_p=1.0, seed=i) for i in range(3)]
        results = await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, params)))
        await engine.close()
        return results

    samples = []
    for k, (prompt, result) in enumerate(zip(prompts, asyncio.run(main()))):
        ids = prompt + result.token_ids
        mask = [0] * len(prompt) + [1] * len(result.token_ids)
        samples.append(TrainSample(ids, mask, [0.0] * len(prompt) + result.logprobs, float(k - 1), f"e#{k}"))
    return samples


@pytest.mark.parametrize("tuning", [None, {**LORA, "dropout": 0.1}], ids=["full", "lora-dropout"])
def test_logprob_mismatch_with_the_hf_engine_is_tiny(folder, tuning):
    """Measured here: ~1e-7 mean |old_logp - engine logprob| (fp32); the bound is 1e-5.
    LoRA with dropout takes the separate no-dropout scoring pass."""
    trainer = PolicyTrainer(make_config(tuning, temperature=0.7, micro_batch_tokens=32), folder)
    metrics = trainer.train_step(engine_samples(None, folder, 0.7))
    assert metrics["logprob_mismatch"] < 1e-5
    # after an update, the engine gets the new weights and agrees again
    samples = engine_samples(trainer.engine_weights(), folder, 0.7)
    assert trainer.train_step(samples)["logprob_mismatch"] < 1e-5


def test_empty_batch_takes_no_step_but_advances_the_schedule(folder):
    trainer = PolicyTrainer(make_config(warmup_iterations=1), folder)
    before = {n: p.detach().clone() for n, p in trainer.parameters.items()}
    metrics = trainer.train_step([])
    assert metrics["trained_tokens"] == 0 and "loss" not in metrics
    assert all(torch.equal(before[n], p) for n, p in trainer.parameters.items())
    assert trainer.train_step(toy_batch())["lr"] == pytest.approx(1e-3)


# ----------------------------------------------------------------------------- two ranks, gloo


def _rank_main(rank: int, world_size: int, store_path: str, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    samples = toy_batch()
    normalizer = batch_normalizer(samples, "token_mean")
    trainer = PolicyTrainer(make_config(micro_batch_tokens=32), Path(folder), rank=rank, world_size=world_size)
    shard = samples[:6] if rank == 0 else samples[6:]  # uneven shards
    metrics = trainer.train_step(shard, normalizer)
    torch.save({"params": {n: p.detach() for n, p in trainer.parameters.items()},
                "grads": {n: p.grad for n, p in trainer.parameters.items()}, "metrics": metrics},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch + transformers: 15-30 s on 2 cores
def test_two_ranks_take_the_single_process_step(folder, tmp_path):
    """Each rank trains on its shard with the global normaliser; after the all-reduce both ranks
    hold identical parameters, and the single-process gradient up to summation order (see
    ``assert_grads_close``).
    Parameters match the single process within 5e-5 (5% of lr; measured 2.2e-5): Adam's first
    step is about ``lr * g / (|g| + eps)``, so gradient elements near eps (1e-8) amplify tiny
    summation-order differences."""
    single = PolicyTrainer(make_config(micro_batch_tokens=32), folder)
    metrics = single.train_step(toy_batch())
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(folder), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert_grads_close(ranks[0]["grads"], {name: p.grad for name, p in single.parameters.items()})
    for name, p in single.parameters.items():
        torch.testing.assert_close(ranks[0]["params"][name], p.detach(), atol=5e-5, rtol=0)
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name])
    assert sum(r["metrics"]["loss"] for r in ranks) == pytest.approx(metrics["loss"], abs=1e-6)
    assert ranks[0]["metrics"]["grad_norm"] == pytest.approx(metrics["grad_norm"], rel=1e-5)



def saved_activation_bytes(trainer: PolicyTrainer, samples: list[TrainSample]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward (no step taken)."""
    saved = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    mb = collate(samples, trainer.device)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        trainer._logp(trainer.model, mb, with_entropy=False)
    return sum(saved)


def test_activation_checkpointing_takes_the_same_step_and_keeps_fewer_activations(folder):
    samples, grads, metrics, kept = toy_batch(), [], [], []
    for checkpointing in (False, True):
        trainer = PolicyTrainer(make_config(activation_checkpointing=checkpointing, kl_coef=0.0), folder)
        kept.append(saved_activation_bytes(trainer, samples))
        metrics.append(trainer.train_step(samples))
        grads.append({n: p.grad.clone() for n, p in trainer.parameters.items()})
    assert_grads_close(grads[1], grads[0])
    for key in ("loss", "entropy", "grad_norm"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-5, abs=1e-7)
    assert kept[1] < kept[0] / 2  # only the decoder layers' inputs (and the head's) are kept
