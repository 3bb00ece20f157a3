"""The llama.cpp column of bench/rollout_engine.py: the batch scheduling (bench/episode_batch.py)
against a fake cached model, and, where llama-cpp-python is installed, the batched decoding
(bench/llama_cpp_engine.py) on the built-in GGUF."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
STOP = 0


@pytest.fixture
def bench(monkeypatch):
    """The bench folder on sys.path, as it is when a bench file runs as a script."""
    monkeypatch.syspath_prepend(str(BENCH))
    import episode_batch

    return episode_batch


def fake_next_token(sequence: list[int]) -> int:
    """A deterministic 'model': the next token depends on every token before it (so a cache that
    lost or repeated a token changes what follows); 0 is the stop token."""
    return (sum(sequence) * 7 + len(sequence)) % 11


def follow_up(prompt: list[int], output: list[int]) -> list[int]:
    """The next turn's prompt: the conversation, a tool result and a header."""
    return prompt + output + [20, 21, 22]


def reference_outputs(episodes) -> list[list[list[int]]]:
    """Each episode run alone without any cache: every token recomputed from the whole sequence."""
    result = []
    for turns in episodes:
        prompt, outputs = list(turns[0].prompt_ids), []
        for turn in turns:
            output: list[int] = []
            while not output or (output[-1] != STOP and len(output) < turn.max_new_tokens):
                output.append(fake_next_token(prompt + output))
            outputs.append(output)
            prompt = follow_up(prompt, output)
        result.append(outputs)
    return result


def run_on_fake_cache(plan):
    """Drive ``plan`` to the end against a per-sequence token cache; checks every chunk continues its
    sequence's cache and that a retired sequence's cache is empty before its id is reused."""
    cache: dict[int, list[int]] = {}
    largest_batch = 0
    while not plan.done:
        chunks = plan.plan()
        largest_batch = max(largest_batch, len(chunks))
        sampled = {}
        for chunk in chunks:
            cached = cache.setdefault(chunk.seq_id, [])
            assert chunk.start == len(cached), "a chunk must continue its sequence's cache"
            cached.extend(chunk.token_ids)
            if chunk.turn is not None:
                sampled[chunk.seq_id] = fake_next_token(cached)
        for forget in plan.advance(chunks, sampled):
            del cache[forget.seq_id][forget.start:]
    return largest_batch, cache


def make_episodes(bench, count: int) -> list[list]:
    return [[bench.Turn([index + 1, 5, 9, index + 2], max_new_tokens=3 + index % 4, seed=index),
             bench.Turn([], max_new_tokens=2 + index % 3)] for index in range(count)]


def test_episodes_share_few_sequences_and_match_an_uncached_run(bench):
    episodes = make_episodes(bench, 7)
    plan = bench.EpisodeBatch(episodes, max_sequences=3, stop_ids={STOP}, next_prompt=follow_up)
    largest_batch, cache = run_on_fake_cache(plan)
    assert largest_batch == 3
    assert [plan.finished[i] for i in range(7)] == reference_outputs(episodes)
    assert plan.generated_tokens() == sum(len(o) for outputs in reference_outputs(episodes) for o in outputs)
    assert set(cache) == {0, 1, 2} and all(not tokens for tokens in cache.values()), "retired sequences are dropped"


def test_a_later_turn_feeds_only_what_the_cache_lacks(bench):
    turns = [bench.Turn([3, 4, 5], max_new_tokens=2), bench.Turn([], max_new_tokens=1)]
    plan = bench.EpisodeBatch([turns], max_sequences=1, stop_ids=set(), next_prompt=follow_up)
    fed = []
    while not plan.done:
        chunks = plan.plan()
        fed.append(chunks[0].token_ids)
        plan.advance(chunks, {0: 1})
    assert fed == [[3, 4, 5], [1], [1, 20, 21, 22]]


def test_a_long_prompt_is_fed_over_steps_and_only_its_last_chunk_samples(bench):
    long_turn, short_turn = bench.Turn(list(range(1, 11)), max_new_tokens=1), bench.Turn([7, 8], max_new_tokens=1)
    plan = bench.EpisodeBatch([[long_turn], [short_turn]], max_sequences=2, stop_ids=set(),
                              next_prompt=follow_up, max_step_tokens=4)
    steps = []
    while not plan.done:
        chunks = plan.plan()
        steps.append([(c.seq_id, c.token_ids, c.start, c.turn) for c in chunks])
        plan.advance(chunks, {c.seq_id: 99 for c in chunks if c.turn is not None})
    assert steps == [
        [(0, [1, 2, 3, 4], 0, None), (1, [7], 0, None)],  # over the budget by one: no sequence starves
        [(0, [5, 6, 7, 8], 4, None), (1, [8], 1, short_turn)],
        [(0, [9, 10], 8, long_turn)],
    ]
    assert plan.finished == {0: [[99]], 1: [[99]]}


def test_a_rewritten_prompt_drops_the_cache_tail(bench):
    def rewrite(prompt, output):
        return prompt[:2] + [30] + output

    turns = [bench.Turn([3, 4, 5, 6], max_new_tokens=1), bench.Turn([], max_new_tokens=1)]
    plan = bench.EpisodeBatch([turns], max_sequences=1, stop_ids=set(), next_prompt=rewrite)
    chunks = plan.plan()
    assert plan.advance(chunks, {0: 8}) == [bench.Forget(0, 2)]
    assert [(c.token_ids, c.start) for c in plan.plan()] == [([30, 8], 2)]


def built_in_gguf() -> Path:
    from reinflow.config.models import ModelResolutionError, smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except ModelResolutionError as error:
        pytest.skip(f"the built-in GGUF is missing: {error}")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python (the bench extra) is not installed")
def test_llama_cpp_greedy_tokens_are_the_same_alone_and_in_a_batch_of_4(bench):
    import llama_cpp_engine

    prompts = [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 30, 2], [1, 504, 3458, 282, 4649, 314],
               [1, 1978, 1690, 314, 216, 34, 1232, 216, 34, 47], [1, 2683, 314, 260, 1345, 2002, 28, 339]]
    episodes = [[bench.Turn(prompt, max_new_tokens=12, temperature=0.0)] for prompt in prompts]
    engine = llama_cpp_engine.LlamaCppBatch(built_in_gguf(), max_sequences=4, threads=2, context_per_sequence=256)
    try:
        together = engine.run_episodes(episodes, stop_ids=[2], next_prompt=follow_up)
        alone = [engine.run_episodes([episode], stop_ids=[2], next_prompt=follow_up).outputs[0] for episode in episodes]
    finally:
        import asyncio

        asyncio.run(engine.close())
    assert together.outputs == alone
    assert together.steps < sum(len(outputs[0]) for outputs in alone), "the 4 episodes decoded in shared steps"
    assert all(outputs[0] for outputs in alone)
