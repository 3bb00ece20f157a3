"""Server time of the logview on a big iteration: the episode table and one episode's token view.

    .venv/bin/python bench/logview_load.py            # ~1 minute on 2 idle cores

Writes a run folder with a judged iteration of ``--episodes`` episodes (default 2,000: 250 tasks x
8) the size real agent episodes have: a math-agent system prompt, a question, ``--turns`` assistant
turns with a Python tool call and its output each, and one merged training sample per episode of
about 300 real token ids (the tiny model's tokenizer) with trained spans, logprobs and rewards.
The file is written as the judge writes it (``pq.write_table`` over ``JUDGED_SCHEMA``).

Then serves it with the real server (uvicorn on loopback, in this process) and times HTTP requests
from this process:

- the iteration page's table (``/api/episodes``, all episodes, sorted by reward): the first request
  of a fresh server (one-time imports included), the first request for a new iteration file of
  the same size (the case of an iteration finishing during training: nothing cached), and warm
  (cached; median of ``--repeats``);
- one episode's token view (``/api/episode``): cold (first read of the file's token data, the
  tokenizer loaded on first use) and warm;
- the runs overview the page polls (``/api/runs``), warm.

The target (issue 7): under one second of server time for the iteration page.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import random
import statistics
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tokenizers import Tokenizer

from reinflow.config import load_config
from reinflow.rollout.episode_schema import JUDGED_SCHEMA
from reinflow.logview.server import serve_in_thread
from reinflow.logview.settings import LogviewSettings
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.run.run_state import RunInfo

ROOT = Path(__file__).resolve().parents[1]
RUN = "bench/run-20990101-000000"
SYSTEM = ("You are a math assistant. Solve the problem step by step. You can run Python with the "
          "execute_python_code tool: print the values you need. When you know the answer, give it as a single "
          "number in the final result.\n\n# Tools\n\n") + "<tools>\n" + json.dumps({
              "type": "function", "function": {"name": "execute_python_code", "description": "Run Python code.",
                                               "parameters": {"properties": {"code": {"type": "string"}}}}}) + "\n</tools>"


def episode_row(tokenizer, task: int, k: int, turns: int, rng: random.Random) -> dict:
    """One judged episode of realistic size, its sample built from real token ids."""
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    question = f"Task {task}: a shop sells {a} apples on Monday and {b} on Tuesday. How many in total?"
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    turn_records, ids, mask, logprobs = [], [], [], []

    def add(text: str, trained: bool) -> None:
        piece = tokenizer.encode(text, add_special_tokens=False).ids
        ids.extend(piece)
        mask.extend([int(trained)] * len(piece))
        logprobs.extend([round(-rng.expovariate(2.0), 4) if trained else 0.0 for _ in piece])

    add(SYSTEM + "\n" + question, trained=False)
    for index in range(turns):
        code = f"apples = {a} + {b}\nprint(apples)  # step {index}"
        call = json.dumps({"name": "execute_python_code", "arguments": {"code": code}})
        reply = f"Let me add the two days. <tool_call>{call}</tool_call>"
        output = f"<tool_response>\n{a + b}\n</tool_response>"
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": output}]
        turn_records.append({"index": index, "response_text": reply, "format_errors": [], "finish_reason": "stop",
                             "tool_calls": [{"id": f"c{index}", "name": "execute_python_code", "arguments": {"code": code}}],
                             "prompt_tokens": len(ids), "output_tokens": 0, "extends_previous": index > 0})
        start = len(ids)
        add(reply, trained=True)
        turn_records[-1]["output_tokens"] = len(ids) - start
        add(output, trained=False)
    answer = str(a + b if rng.random() < 0.5 else a + b + 1)
    messages.append({"role": "assistant", "content": answer})
    add(answer, trained=True)
    reward = float(answer == str(a + b))
    return {
        "iteration": 1, "task_id": f"task-{task}", "episode_id": f"task-{task}#{k}", "group_index": k,
        "question": question, "reference_answer": str(a + b), "task_row": json.dumps({"question": question}),
        "status": "ok", "error": None, "context_overflow": False, "final_answer": answer, "workflow_reward": None,
        "judge_input": "{}", "metadata": "{}", "messages": json.dumps(messages), "turns": json.dumps(turn_records),
        "samples": [{"token_ids": ids, "loss_mask": mask, "logprobs": logprobs}],
        "num_turns": turns + 1, "num_tool_calls": turns, "format_errors": int(rng.random() < 0.05),
        "generated_tokens": sum(mask), "finish_reason": "stop", "wall_seconds": rng.uniform(1, 20),
        "raw_reward": reward, "is_success": reward > 0, "judge_error": None, "judge_seconds": 0.01,
        "length_capped": False, "degenerate": False, "format_penalty": 0.0, "degenerate_penalty": 0.0, "reward": reward,
    }


def write_run(runs: Path, episodes: int, group_size: int, turns: int) -> tuple[Path, dict]:
    """The run folder with iteration 1 and an identical iteration 2 (a file the server has not seen)."""
    tokenizer = Tokenizer.from_file(str(resolve_model(TINY_RANDOM_LLAMA) / "tokenizer.json"))
    rng = random.Random(0)
    rows = [episode_row(tokenizer, i // group_size, i % group_size, turns, rng) for i in range(episodes)]
    config = load_config(ROOT / "tests" / "configs" / "tiny_e2e.yaml", ["experiment=bench"])
    run_dir = runs / RUN
    RunInfo(run_dir.name, config.experiment, config.fingerprint(), None, "running", 0.0).save(run_dir)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    table = pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA)
    for iteration in (1, 2):
        (run_dir / "judged").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, run_dir / "judged" / f"iter_{iteration}.parquet")
    lengths = [len(r["samples"][0]["token_ids"]) for r in rows]
    return run_dir, {
        "episodes": episodes, "file_mb": (run_dir / "judged" / "iter_1.parquet").stat().st_size / 1e6,
        "sample_tokens_mean": statistics.fmean(lengths),
        "messages_chars_mean": statistics.fmean(len(r["messages"]) for r in rows),
    }


def timed_get(url: str) -> tuple[float, int]:
    """Seconds for one GET (loopback) and the response size."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise SystemExit(f"GET {url}: {error.code} {error.read().decode()[:300]}") from None
    return time.perf_counter() - started, len(body)


def api(base: str, path: str, **params: str) -> str:
    return base.rstrip("/") + path + "?" + urllib.parse.urlencode(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3, help="assistant turns with a tool call, per episode")
    parser.add_argument("--repeats", type=int, default=5, help="warm requests; the median is shown")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        runs = Path(folder) / "runs"
        started = time.perf_counter()
        _, sizes = write_run(runs, args.episodes, args.group_size, args.turns)
        print(f"wrote {sizes['episodes']} episodes per iteration in {time.perf_counter() - started:.1f} s: "
              f"{sizes['file_mb']:.1f} MB judged file, {sizes['sample_tokens_mean']:.0f} tokens per sample, "
              f"{sizes['messages_chars_mean']:.0f} characters of messages per episode")
        server = serve_in_thread(LogviewSettings(runs_dir=runs))
        try:
            ids = [f"task-{i // args.group_size}#{i % args.group_size}" for i in (args.episodes // 2, args.episodes // 3)]
            measure(server.url, args.repeats, ids)
        finally:
            server.stop()


def measure(base: str, repeats: int, episode_ids: list[str]) -> None:
    table = {"run": RUN, "set": "iter_1", "sort": "reward", "desc": "1"}
    episode = {"run": RUN, "set": "iter_1", "id": episode_ids[0]}
    results = [
        ("iteration table, first request of a fresh server", timed_get(api(base, "/api/episodes", **table))),
        ("iteration table, new iteration file (cold cache)",
         timed_get(api(base, "/api/episodes", **(table | {"set": "iter_2"})))),
        ("iteration table, warm (median)", median_get(api(base, "/api/episodes", **table), repeats)),
        ("episode token view, cold (first token read)", timed_get(api(base, "/api/episode", **episode))),
        ("episode token view, warm (median)",
         median_get(api(base, "/api/episode", **(episode | {"id": episode_ids[1]})), repeats)),
        ("runs overview /api/runs, warm (median)", median_get(base + "api/runs", repeats)),
    ]
    width = max(len(name) for name, _ in results)
    for name, (seconds, size) in results:
        print(f"{name:<{width}}  {seconds:7.3f} s  ({size / 1e3:,.0f} kB)")
    cold_table = results[1][1][0]
    print(f"target: iteration page under 1 s of server time -> {'met' if cold_table < 1.0 else 'MISSED'} "
          f"({cold_table:.3f} s cold)")


def median_get(url: str, repeats: int) -> tuple[float, int]:
    timed_get(url)  # make sure it is cached
    runs = [timed_get(url) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[0][1]


if __name__ == "__main__":
    main()
