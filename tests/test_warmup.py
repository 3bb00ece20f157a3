"""The warm start's supervised step on the tiny random Llama: the loss against a slow reference,
labels outside the loss mask change nothing, the loss falls over a few steps, GRPO's optimizer is
left untouched; the config section, the preflight checks and the once-only MLflow logging."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from test_demonstration import ROLLOUT, demonstration
from transformers import AutoTokenizer

from reinflow.config import ExperimentConfig, WarmupConfig
from reinflow.config.errors import ConfigError
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.rollout.chat_format import ChatTemplate
from reinflow.rollout.demonstration import render_demonstration
from reinflow.run.preflight import check_warmup
from reinflow.run.warmup import warm_start_samples
from reinflow.tracking.mlflow_run import log_series_once
from reinflow.training import warmup as warmup_module
from reinflow.training.padded_batch import collate
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample
from reinflow.training.warmup import sft_loss, supervised_fine_tune

ADD_TOOL = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


def make_config(**warmup) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment": "test",
        "data": {"source": {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 8, "test": 8}},
                 "path": "data/test"},
        "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent"},
        "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
        "model": {"path": TINY_RANDOM_LLAMA},
        "train": {"micro_batch_tokens": 600, "max_grad_norm": 100.0},
        "warmup": {"lr": 1e-3, "batch_size": 2} | warmup,
    })


@pytest.fixture(scope="module")
def folder() -> Path:
    return resolve_model(TINY_RANDOM_LLAMA)


@pytest.fixture(scope="module")
def samples(folder) -> list[TrainSample]:
    """Four rendered demonstrations (different sums), as the warm start trains on them."""
    template = ChatTemplate(AutoTokenizer.from_pretrained(folder))
    rows = []
    for a, b in ((2, 3), (4, 1), (6, 2), (7, 7)):
        row = demonstration([ADD_TOOL], {"role": "assistant", "content": f"The sum is {a + b}."})
        row["messages"][1]["content"] = f"What is {a} + {b}?"
        row["messages"][2]["tool_calls"][0]["function"]["arguments"] = json.dumps({"a": a, "b": b})
        row["messages"][3]["content"] = str(a + b)
        rows.append(row)
    rendered = [s for row in rows for s in render_demonstration(row, template, ROLLOUT)]
    return [TrainSample(s.token_ids, s.loss_mask, [0.0] * len(s.token_ids), 0.0, f"d#{k}") for k, s in enumerate(rendered)]


def reference_loss(model: torch.nn.Module, batch: list[TrainSample], labels_outside: int | None = None) -> float:
    """Slow: full logits of each sample, cross-entropy summed over trained positions, token mean.
    ``labels_outside``: replace every untrained position's label by this id (-100 = ignored)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in batch:
            logp = torch.log_softmax(model(torch.tensor([sample.token_ids])).logits[0].double(), -1)
            labels = list(sample.token_ids)
            if labels_outside is not None:
                labels = [t if flag else labels_outside for t, flag in zip(labels, sample.loss_mask, strict=True)]
            for t in range(1, len(labels)):
                if labels[t] != -100 and sample.loss_mask[t]:
                    total -= float(logp[t - 1, labels[t]])
                    count += 1
    return total / count


def trainer_loss(trainer: PolicyTrainer, batch: list[TrainSample]) -> float:
    normalizer = sum(s.trained_tokens for s in batch)
    with torch.no_grad():
        padded = collate(batch, trainer.device)
        return float(sft_loss(trainer.log_probs(padded, 1.0), padded.loss_mask, normalizer))


def test_sft_loss_equals_a_slow_cross_entropy_on_assistant_tokens_only(folder, samples):
    trainer = PolicyTrainer(make_config(), folder)
    batch = samples[:3]
    expected = reference_loss(trainer.model, batch)
    assert trainer_loss(trainer, batch) == pytest.approx(expected, rel=1e-5)
    # labels of the untrained (system, user, tool, template) positions are not read: any value gives the same loss
    for outside in (-100, 0, 4242):
        assert reference_loss(trainer.model, batch, labels_outside=outside) == pytest.approx(expected, rel=1e-12)


def test_sft_loss_ignores_whatever_masked_positions_hold():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -6.0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    garbage = logp.masked_fill(~mask, float("nan")).masked_fill(torch.tensor([[True, False, False], [False, False, True]]),
                                                                float("-inf"))
    assert float(sft_loss(logp, mask, 3)) == pytest.approx((2 + 3 + 0.5) / 3)
    assert float(sft_loss(garbage, mask, 3)) == float(sft_loss(logp, mask, 3))
    with pytest.raises(ValueError, match="normalizer"):
        sft_loss(logp, mask, 0)


def test_the_loss_falls_and_grpos_optimizer_is_untouched(folder, samples):
    config = make_config(epochs=6, lr=1e-2)  # the tiny random model learns slowly: 1e-3 only goes 10.8 -> 9.3
    trainer = PolicyTrainer(config, folder)
    before = trainer_loss(trainer, samples)
    steps = []
    result = supervised_fine_tune(trainer, samples, config.warmup, seed=0,
                                  on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(k, 12) for k in range(1, 13)] and len(result.losses) == 12
    assert trainer_loss(trainer, samples) < 0.5 * before
    assert sum(result.losses[-4:]) < 0.5 * sum(result.losses[:4])
    assert result.trained_tokens == 6 * sum(s.trained_tokens for s in samples)
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.scheduler.last_epoch == 0
    assert all(p.grad is None for p in trainer.parameters.values())


def test_the_same_warm_start_twice_gives_the_same_weights(folder, samples):
    weights = []
    for _ in range(2):
        config = make_config(epochs=1)
        trainer = PolicyTrainer(config, folder)
        supervised_fine_tune(trainer, samples, config.warmup, seed=3)
        weights.append({name: p.detach().clone() for name, p in trainer.parameters.items()})
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_doctests():
    assert doctest.testmod(warmup_module).failed == 0


# ----------------------------------------------------------------------------- config, preflight, tracking


def test_warmup_section_is_off_by_default_documented_and_bounded(tmp_path):
    assert not make_config().warmup.enabled
    assert make_config(demonstrations="d.jsonl").warmup.enabled and make_config(from_run="runs/x/run-1").warmup.enabled
    for name, field in WarmupConfig.model_fields.items():
        assert field.description, name
    for bad in ({"epochs": 0}, {"lr": 0}, {"batch_size": 0}, {"demonstrations": "d.csv"}, {"typo": 1}):
        with pytest.raises(ValueError):
            make_config(**bad)


def test_preflight_refuses_a_missing_file_and_the_ray_backbone(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    check_warmup(make_config(demonstrations="d.jsonl"), tmp_path, "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml: warmup.demonstrations: no such file: .*missing.jsonl$"):
        check_warmup(make_config(demonstrations="missing.jsonl"), tmp_path, "c.yaml")
    with pytest.raises(ConfigError, match="warmup.from_run: no such run folder"):
        check_warmup(make_config(from_run="runs/none"), tmp_path, "c.yaml")
    ray = make_config(demonstrations="d.jsonl").model_copy(update={"backbone": "ray"})
    with pytest.raises(ConfigError, match="runs on the in-process trainer only: set backbone: debug"):
        check_warmup(ray, tmp_path, "c.yaml")


def test_warmup_metrics_are_logged_once(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.log_metric(run_id, "warmup/loss", 9.0, step=1)  # a crash after the first of several batches
    totals = {"warmup/tokens": 10.0, "warmup/seconds": 2.0}
    assert log_series_once(client, run_id, {"warmup/loss": [9.0, 8.0, 7.0]}, totals, "warmup/seconds")
    assert not log_series_once(client, run_id, {"warmup/loss": [9.0, 8.0, 7.0]}, totals, "warmup/seconds")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "warmup/loss")] == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "warmup/seconds")] == [(0, 2.0)]


def test_warm_start_samples_from_both_sources_capped(folder, tmp_path):
    rows = [demonstration([ADD_TOOL]) for _ in range(3)]
    (tmp_path / "demos.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    episode = {"status": "ok", "is_success": True,
               "samples": [{"token_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "logprobs": [0.0, -1.0, -1.0]}]}
    (tmp_path / "old" / "judged").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([episode, episode]), tmp_path / "old" / "judged" / "iter_3.parquet")
    config = make_config(demonstrations="demos.jsonl", from_run="old", max_conversations=4)
    config = config.model_copy(update={"rollout": ROLLOUT})
    samples, sources = warm_start_samples(config, tmp_path, AutoTokenizer.from_pretrained(folder))
    assert [len(source.conversations) for source in sources] == [3, 2]
    assert [s.episode_id.rsplit("/", 1)[-1] for s in samples] == ["demos.jsonl#0", "demos.jsonl#1", "demos.jsonl#2", "old#0"]
    assert samples[-1].token_ids == [1, 2, 3] and samples[-1].loss_mask == [0, 1, 1]
    assert set(samples[-1].engine_logprobs) == {0.0}
