"""Weights taken from the policy now and served by the engine later (reinflow/run/weight_handover.py):
the engine gets exactly the update they were taken after, the policy's next step waits until they
are served, and a failed load still lets the policy go on."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from test_checkpoint import batch, make_config

from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.engines.hf import HFEngine
from reinflow.run.rollout_runtime import RolloutRuntime
from reinflow.run.weight_handover import serve_taken_weights, take_engine_weights
from reinflow.training.policy import PolicyTrainer


def embeddings(module: torch.nn.Module) -> torch.Tensor:
    return module.get_input_embeddings().weight.detach().clone()


@pytest.fixture
def session():
    config = make_config()
    folder = resolve_model(TINY_RANDOM_LLAMA)
    engine = HFEngine(folder, max_model_len=64, max_batch_size=2)
    runtime = RolloutRuntime(config, engine, tokenizer=None, workflow=None)
    return SimpleNamespace(runtime=runtime, policy=PolicyTrainer(config, folder), taken_weights=None, engine_version=0)


def test_the_engine_serves_the_update_the_weights_were_taken_after(session):
    session.policy.train_step(batch(1))
    after_update_1 = embeddings(session.policy.model)
    take_engine_weights(session, 1)
    assert session.engine_version == 0 and not torch.equal(embeddings(session.runtime.engine.model), after_update_1)

    # update 2 runs beside the hand-over: its optimizer step must wait until the engine has copied update 1
    step = threading.Thread(target=session.policy.train_step, args=(batch(2),))
    step.start()
    step.join(timeout=1.0)
    assert step.is_alive(), "the next step changed the weights before the engine had served them"
    assert serve_taken_weights(session) >= 0.0
    step.join(timeout=60)
    assert not step.is_alive()

    assert session.engine_version == 1 and session.taken_weights is None
    assert torch.equal(embeddings(session.runtime.engine.model), after_update_1)
    assert not torch.equal(embeddings(session.policy.model), after_update_1)  # update 2 went on afterwards
    assert serve_taken_weights(session) is None  # served once


def test_a_failed_load_raises_and_still_releases_the_policy():
    def refuse(weights):
        raise ValueError("weights do not fit the model")

    readers = []
    runtime = SimpleNamespace(policy_weights_later=lambda policy: lambda: {"w": torch.zeros(2)},
                              engine=SimpleNamespace(load_weights=refuse))
    policy = SimpleNamespace(hold_state=readers.append)
    session = SimpleNamespace(runtime=runtime, policy=policy, taken_weights=None, engine_version=3)
    take_engine_weights(session, 4)
    with pytest.raises(ValueError, match="do not fit"):
        serve_taken_weights(session)
    assert session.engine_version == 3 and session.taken_weights is None
    (until,) = readers
    assert until(timeout=0) is True  # the policy's next step does not wait forever
