"""Engine replicas on Ray (`reinflow.distributed.engine_replicas`) on the tiny random Llama: the router
(least in flight, prefix affinity; pure), the config, `engine_for`, two replicas giving exactly what
one in-process `HFEngine` gives (seeded and unseeded requests), the weight hand-off reaching every
replica (and back), a rejected request re-raised as it is, a lost replica surfacing as
`EngineReplicaLost` without a hang, and (slow) a two-node cluster simulated on this machine
(`ray.cluster_utils.Cluster`, joined through `train.ray_address`) where the two replicas and the two
policy workers each land on both nodes and a generate / train / load_weights round trip works.

One local Ray instance (4 logical CPUs) serves the module; the two replicas (1 CPU, 1 torch thread
each) are shared by the tests, which leave the weights as they found them; the lost-replica test
kills one and therefore comes last.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reinflow.config import ExperimentConfig
from reinflow.run import rollout_runtime
from reinflow.engines.base import Generation, SamplingParams
from reinflow.engines.hf import HFEngine
from reinflow.distributed.engine_replicas import EngineReplicaLost, RayEngineReplicas
from reinflow.distributed.replica_router import MIN_AFFINE_TOKENS, ReplicaRouter
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model

ray = pytest.importorskip("ray")

PROMPTS = [[1, 9, 40, 7], [1, *range(300, 311)], [1, 5], [1, 77, 88, 99, 111, 222, 333], [1, *range(1000, 1040)],
           [1, 42, 42, 42, 42, 42]]
MAX_NEW = [9, 21, 5, 14, 30, 6]
ENGINE = {"max_model_len": 512, "max_batch_size": 4}


def make_config(replicas: int = 2, backbone: str = "debug", workers: int = 1, train: dict | None = None,
                **rollout) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment": "test",
        "backbone": backbone,
        "data": {"source": {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 8, "test": 8}},
                 "path": "data/test"},
        "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent", "engine_replicas": replicas,
                    "cpus_per_engine": 1} | ENGINE | rollout,
        "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
        "model": {"path": TINY_RANDOM_LLAMA},
        "train": {"workers": workers, "cpus_per_worker": 1, "lr": 1e-3, "micro_batch_tokens": 32} | (train or {}),
    })


def requests(seeded: bool = True) -> list[tuple[list[int], SamplingParams]]:
    """The prompts (no two share a prefix of 8 tokens) with seeded samples, or other prompts (first
    token 2: none cached by a replica yet, whose reused prefix may change the last bits) unseeded."""
    return [(p if seeded else [2, *p[1:]], SamplingParams(max_new_tokens=n, temperature=1.0, top_p=0.9 if i % 2 else 1.0,
                               seed=1000 + i if seeded else None))
            for i, (p, n) in enumerate(zip(PROMPTS, MAX_NEW))]


async def run_all(engine, batch) -> list[Generation]:
    return await asyncio.gather(*(engine.generate(p, s) for p, s in batch))


def in_process(folder: Path, batch, weights: dict[str, torch.Tensor] | None = None) -> list[Generation]:
    """One fresh in-process HFEngine (1 torch thread, like each replica) answering ``batch`` at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    async def main() -> list[Generation]:
        engine = HFEngine(folder, device="cpu", **ENGINE)
        if weights is not None:
            engine.load_weights(weights)
        try:
            return await run_all(engine, batch)
        finally:
            await engine.close()

    try:
        return asyncio.run(main())
    finally:
        torch.set_num_threads(threads)


def perturbed(folder: Path) -> dict[str, torch.Tensor]:
    state = load_file(str(next(folder.glob("*.safetensors"))))
    generator = torch.Generator().manual_seed(7)
    return {name: t + 0.05 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t
            for name, t in state.items()}


@pytest.fixture(scope="module")
def folder() -> Path:
    return resolve_model(TINY_RANDOM_LLAMA)


@pytest.fixture(scope="module")
def ray_session():
    """A private local Ray for the module (the engine uses an initialised Ray and leaves it running)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def replicas(ray_session, folder):
    started = time.perf_counter()
    engine = RayEngineReplicas(make_config(2, train={"ray_start_timeout_seconds": 120}), folder)
    print(f"two replicas started in {time.perf_counter() - started:.1f} s")
    yield engine
    asyncio.run(engine.close())


# ----------------------------------------------------------------------------- pure parts


def test_router_sends_each_request_to_the_least_busy_replica():
    router = ReplicaRouter(2, capacity=4)
    distinct = [[i] * MIN_AFFINE_TOKENS for i in range(4)]
    assert [router.pick(p) for p in distinct] == [0, 1, 0, 1]  # concurrent: least in flight
    router.done(0), router.done(0)
    assert router.pick([9] * 20) == 0
    for replica in (0, 1, 1):
        router.done(replica)
    assert (router.in_flight, router.busy) == ([0, 0], 0)
    assert router.pick([50, 1]) == 1 and router.pick([51, 2]) == 0  # one at a time: ties go to the one sent fewer


def test_router_keeps_a_prompt_and_its_extensions_on_one_replica_until_it_is_full():
    router = ReplicaRouter(2, capacity=3)
    task_a, task_b = list(range(100, 120)), list(range(200, 220))
    assert router.pick(task_a) == 0 and router.pick(task_b) == 1
    assert [router.pick(task_a) for _ in range(2)] == [0, 0]  # the GRPO group stays with its prompt
    assert router.pick(task_a) == 1  # replica 0 holds 3 = max_batch_size: the least busy takes it
    router.done(0)
    assert router.pick(task_b + [5, 6, 7]) == 1  # an agent's next turn follows its conversation
    assert router.in_flight == [2, 3]
    assert router.pick(task_a + [8, 9]) == 0  # both hold task_a: the one with fewer in flight
    router.done(0)
    assert router.pick(task_a + [8, 9, 10]) == 0  # the longest remembered prompt wins
    router.done(0), router.done(0)
    assert router.pick(task_b[:MIN_AFFINE_TOKENS - 1]) == 0  # too short to pull: least busy (1 vs 3)
    assert router.sent == [6, 3]


def test_config_replicas_default_to_the_in_process_engine_and_vllm_replicas_need_gpus():
    rollout = make_config(1).rollout
    assert (rollout.engine_replicas, rollout.cpus_per_engine, rollout.gpus_per_engine) == (1, 1.0, 0.0)
    raw = make_config(2).model_dump(mode="json")
    raw["rollout"]["engine"], raw["model"]["dtype"] = "vllm", "bfloat16"
    with pytest.raises(ValueError, match="each vLLM replica needs a GPU"):
        ExperimentConfig.model_validate(raw)
    raw["rollout"]["gpus_per_engine"] = 1
    assert ExperimentConfig.model_validate(raw).rollout.gpus_per_engine == 1
    with pytest.raises(ValueError, match="engine_replicas"):
        make_config(0)


def test_engine_for_builds_replicas_only_above_one(monkeypatch, folder):
    built = []
    monkeypatch.setattr("reinflow.distributed.engine_replicas.RayEngineReplicas",
                        lambda config, model_folder: built.append((config.rollout.engine_replicas, model_folder)))
    rollout_runtime.engine_for(make_config(3), folder)
    assert built == [(3, folder)]
    engine = rollout_runtime.engine_for(make_config(1), folder)
    assert isinstance(engine, HFEngine) and built == [(3, folder)]
    asyncio.run(engine.close())


# ----------------------------------------------------------------------------- two replicas


def test_two_replicas_give_what_one_in_process_engine_gives(replicas, folder):
    assert len(replicas.nodes) == 2 and len({n["pid"] for n in replicas.nodes}) == 2
    assert all(n["threads"] == 1 and n["device"] == "cpu" for n in replicas.nodes)
    assert not replicas.started_ray  # the module's Ray was already initialised
    for seeded in (True, False):
        before = replicas.requests_per_replica
        got = asyncio.run(run_all(replicas, requests(seeded)))
        expected = in_process(folder, requests(seeded))
        assert got == expected  # token ids, logprobs (exact floats) and finish reasons
        spread = [after - b for after, b in zip(replicas.requests_per_replica, before)]
        assert spread == [3, 3]  # six concurrent requests, no shared prefixes: least in flight
    assert replicas.router.busy == 0


def test_load_weights_reaches_every_replica_and_back(replicas, folder):
    prompt, sampling = requests()[1]
    new = perturbed(folder)
    original = in_process(folder, [(prompt, sampling)])[0]
    changed = in_process(folder, [(prompt, sampling)], weights=new)[0]
    assert changed.logprobs != original.logprobs

    def per_replica() -> list[Generation]:
        return ray.get([actor.generate.remote(prompt, sampling) for actor in replicas._actors])

    started = time.perf_counter()
    replicas.load_weights(new)
    print(f"load_weights on 2 replicas: {time.perf_counter() - started:.2f} s")
    assert per_replica() == [changed, changed]
    replicas.load_weights(load_file(str(next(folder.glob("*.safetensors")))))
    assert per_replica() == [original, original]


def test_a_rejected_request_is_re_raised_as_it_is(replicas):
    with pytest.raises(ValueError, match="non-empty prompt"):
        asyncio.run(replicas.generate([], SamplingParams(max_new_tokens=2, temperature=1.0, top_p=1.0)))
    assert replicas.router.busy == 0
    asyncio.run(run_all(replicas, requests()[:2]))  # still usable


def test_a_lost_replica_raises_promptly_and_the_engine_stays_failed(replicas):
    """Runs last: it kills a replica of the shared engine."""
    ray.kill(replicas._actors[0], no_restart=True)
    started = time.perf_counter()
    with pytest.raises(EngineReplicaLost, match=r"engine replica 0 of 2 \(pid \d+ on [^)]+\) was lost"):
        asyncio.run(run_all(replicas, requests()))  # spread over both replicas: one request hits the dead one
    elapsed = time.perf_counter() - started
    print(f"EngineReplicaLost after {elapsed:.2f} s")
    assert elapsed < 30
    with pytest.raises(EngineReplicaLost, match="can no longer be used"):
        replicas.load_weights({})
    assert replicas._actors == []  # the survivor was killed and the placement group removed at once
    asyncio.run(replicas.close())  # twice is fine (the fixture closes again)


# ----------------------------------------------------------------------------- two nodes


def _two_node_main(out: str) -> None:
    """In a fresh interpreter: a 2-node × 2-CPU cluster joined through ``train.ray_address``; two
    engine replicas × 1 CPU (built first, as ``build_runtime`` does) and two policy workers × 1 CPU.
    Either node could hold both of either, so one per node is the placement's doing."""
    from ray.cluster_utils import Cluster

    from reinflow.distributed.policy_group import RayPolicyGroup
    from reinflow.training.train_batch import TrainSample

    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    assert not ray.is_initialized()
    folder = resolve_model(TINY_RANDOM_LLAMA)
    config = make_config(2, backbone="ray", workers=2)
    config.train.ray_address = cluster.address
    engine = rollout_runtime.engine_for(config, folder)
    group = RayPolicyGroup(config, folder, timeout_s=120)
    batch = requests()
    before = asyncio.run(run_all(engine, batch))
    samples = [TrainSample([1, 50, 51, 52, k, last], [0, 0, 0, 0, 1, 1], [0.0] * 6, adv, f"t{k}{last}")
               for k in range(7, 11) for last, adv in ((100, 1.0), (200, -1.0))]
    group.train_step(samples)
    weights = group.engine_weights()
    engine.load_weights(weights)
    after = asyncio.run(run_all(engine, batch))
    expected = in_process(folder, batch, weights={name: t.clone() for name, t in weights.items()})
    result = {"engine_nodes": [n["node_id"] for n in engine.nodes], "policy_nodes": [n["node_id"] for n in group.nodes],
              "cluster_nodes": [n["NodeID"] for n in ray.nodes()], "connected_by_engine": engine.started_ray,
              "connected_by_group": group.started_ray, "gcs_address": ray.get_runtime_context().gcs_address,
              "cluster_address": cluster.address, "matches_before": before == in_process(folder, batch),
              "changed": after != before, "matches_after": after == expected,
              "per_replica": engine.requests_per_replica}
    group.close()
    asyncio.run(engine.close())
    result |= {"ray_left_running": ray.is_initialized(), "seconds": time.perf_counter() - started}
    cluster.shutdown()
    Path(out).write_text(json.dumps(result))


@pytest.mark.slow  # two Ray nodes, two engine replicas and two policy workers from scratch
def test_two_node_cluster_places_engine_replicas_and_workers_on_both_nodes(tmp_path):
    out = tmp_path / "result.json"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"import test_ray_engine as t; t._two_node_main({str(out)!r})"
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "REINFLOW_RAY_PLACEMENT")}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=500, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    print(f"two-node engine replicas test: {result['seconds']:.1f} s; requests per replica {result['per_replica']}")
    assert result["connected_by_engine"] and not result["connected_by_group"]  # the engine joined, via the key
    assert result["gcs_address"] == result["cluster_address"] and len(result["cluster_nodes"]) == 2
    assert len(set(result["engine_nodes"])) == 2 and set(result["engine_nodes"]) <= set(result["cluster_nodes"])
    assert len(set(result["policy_nodes"])) == 2 and set(result["policy_nodes"]) <= set(result["cluster_nodes"])
    assert result["matches_before"] and result["changed"] and result["matches_after"]
    assert not result["ray_left_running"]
