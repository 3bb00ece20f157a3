"""The logview in a real browser (Playwright driving Debian's headless Chromium) on a run made by the
tiny random model: click run → iteration → episode → token view, check each token's trained/masked
colouring and logprob shading against the Parquet data, check that model output with markup shows
as text, compare two iterations side by side, and see a new iteration appear without a reload.

Chromium is /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it). Where it is
absent the tests skip, except under CI=true, where that is a failure. A screenshot of the token view
is saved under test-artifacts/logview/ (printed; git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers.scripted_engine import ScriptedEngine
from playwright.sync_api import expect, sync_playwright

from reinflow.config import load_config
from reinflow.data.normalize import normalize_rows, row_format
from reinflow.data.shards import write_shards
from reinflow.data.sources import iter_source_rows
from reinflow.judging.judge import load_judge
from reinflow.judging.judge_rollouts import judge_rollout_file
from reinflow.logview.server import RunningServer, serve_in_thread
from reinflow.logview.settings import LogviewSettings
from reinflow.run.rollout_runtime import RolloutRuntime, build_runtime, rollout_iteration
from reinflow.run.run_state import RunInfo

# ~30 s of CPU on 2 cores (tiny model, two rollouts, Chromium): over the fast suite's budget, so CI
# runs them with the slow suite (`make test-slow`)
pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "logview"
RUN = "tiny_e2e/run-20990101-000000"
MARKUP_REPLY = "<script>alert(1)</script><b>bold?</b> 5"
TASKS = [("What is <i>2</i> + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 9 - 2?", "7")]
TRAINED, MASKED = "rgb(22, 163, 74)", "rgb(156, 163, 175)"


def require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} not found (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {message}: .ci/run must install it")
    pytest.skip(message)


def prepare_train_split(config, root: Path) -> Path:
    data = config.data
    fmt = row_format(data.source, data.train_split, data.max_question_chars, root)
    write_shards(normalize_rows(iter_source_rows(data.source, data.train_split, root), fmt), data.path,
                 data.train_split, data.shard_size, {})
    return Path(data.path)


def roll_and_judge(runtime: RolloutRuntime, data_path: Path, run_dir: Path, iteration: int, config) -> Path:
    """Iteration ``iteration`` on the same tasks as iteration 1 (cursor 0), rolled out and judged."""
    rollout = run_dir / "rollouts" / f"iter_{iteration}.parquet"
    rollout_iteration(runtime, data_path, iteration=iteration, cursor=0, output=rollout)
    judged = run_dir / "judged" / f"iter_{iteration}.parquet"
    judge_rollout_file(rollout, judged, load_judge(config.judge, ROOT), config.judge)
    return judged


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder as training leaves it: iteration 1 sampled from the tiny random model, iteration 2
    (same tasks) from a scripted engine whose replies contain markup; both judged."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("logview")
    tasks = tmp / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in TASKS))
    config = load_config(ROOT / "tests" / "configs" / "tiny_e2e.yaml", [
        f"data.source={{type: local, files: {{train: {tasks}, test: {tasks}}}}}", f"data.path={tmp / 'data'}",
        "rollout.max_new_tokens_per_turn=24",
    ])
    run_dir = tmp / "runs" / RUN
    RunInfo(run_dir.name, config.experiment, config.fingerprint(), None, "running", 0.0).save(run_dir)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    data_path = prepare_train_split(config, ROOT)
    runtime = build_runtime(config, ROOT)
    roll_and_judge(runtime, data_path, run_dir, 1, config)
    replies = [MARKUP_REPLY, MARKUP_REPLY + "!"] * config.data.tasks_per_iteration * config.rollout.group_size
    scripted = RolloutRuntime(config, ScriptedEngine(runtime.tokenizer, replies), runtime.tokenizer, runtime.workflow)
    roll_and_judge(scripted, data_path, run_dir, 2, config)
    return run_dir


@pytest.fixture(scope="module")
def server(tiny_run) -> Iterator[RunningServer]:
    running = serve_in_thread(LogviewSettings(runs_dir=tiny_run.parents[1]))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(tiny_run) -> Iterator:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.dialogs, opened.errors = [], []
    opened.on("dialog", lambda dialog: (opened.dialogs.append(dialog.message), dialog.dismiss()))
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    context.close()


def js_number(value: float) -> str:
    """A number as the page's fmt() writes it."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def rows_of(run_dir: Path, iteration: int) -> list[dict]:
    return pq.read_table(run_dir / "judged" / f"iter_{iteration}.parquet").to_pylist()


def open_episode(page, server: RunningServer, iteration: int, episode_id: str) -> None:
    page.goto(server.url)
    page.click(f'a[data-run="{RUN}"]')
    page.click(f'a[data-set="iter_{iteration}"]')
    page.click(f'tr[data-episode="{episode_id}"] a')
    page.wait_for_selector(".sample .tok")


TOKEN_STATE = """samples => samples.map(sample => [...sample.querySelectorAll('.tok')].map(tok => ({
    cls: tok.className, mask: tok.dataset.mask, title: tok.title, text: tok.textContent,
    border: getComputedStyle(tok).borderBottomColor, background: getComputedStyle(tok).backgroundColor })))"""


def test_click_through_to_the_token_view_and_check_every_token_against_parquet(tiny_run, server, page):
    rows = rows_of(tiny_run, 1)
    page.goto(server.url)
    page.click(f'a[data-run="{RUN}"]')
    page.wait_for_selector("#reward-curve polyline")
    assert page.locator("#reward-curve circle[data-series=reward_mean]").count() == 2
    page.click('a[data-set="iter_1"]')
    page.wait_for_selector("table.episodes tbody tr")
    assert page.locator("table.episodes tbody tr").count() == len(rows)

    page.select_option("#filter", "failed")
    failed = [r for r in rows if r["status"] != "ok" or r["is_success"] is False or r["judge_error"] is not None]
    expect(page.locator("#shown-count")).to_have_text(f"{len(failed)} of {len(rows)} episodes")
    assert sorted(page.locator("table.episodes tbody tr").evaluate_all("rs => rs.map(r => r.dataset.episode)")) == \
        sorted(r["episode_id"] for r in failed)
    page.select_option("#filter", "all")
    expect(page.locator("#shown-count")).to_have_text(f"{len(rows)} of {len(rows)} episodes")
    page.click('th[data-sort="reward"]')
    page.click('th.sorted[data-sort="reward"]')  # second click: descending
    page.wait_for_selector('th.sorted.desc[data-sort="reward"]')
    shown = page.locator("table.episodes tbody tr").evaluate_all("rs => rs.map(r => r.dataset.episode)")
    assert shown == [r["episode_id"] for r in sorted(rows, key=lambda r: -r["reward"])]

    episode = rows[0]
    page.click(f'tr[data-episode="{episode["episode_id"]}"] a')
    page.wait_for_selector(".sample .tok")
    tokens = page.locator(".sample").evaluate_all(TOKEN_STATE)
    assert len(tokens) == len(episode["samples"]) >= 1
    for sample, spans in zip(episode["samples"], tokens, strict=True):
        assert len(spans) == len(sample["token_ids"])
        for token_id, mask, logprob, span in zip(sample["token_ids"], sample["loss_mask"], sample["logprobs"], spans,
                                                 strict=True):
            assert span["mask"] == str(mask)
            assert span["title"].startswith(f"id {token_id} · ")
            if mask:
                assert span["cls"] == "tok trained" and span["border"] == TRAINED
                shown_logprob = float(re.search(r"logprob (-?[\d.]+)", span["title"]).group(1))
                assert shown_logprob == pytest.approx(logprob, abs=1e-3)
                alpha = float(re.fullmatch(r"rgba\(22, 163, 74, ([\d.]+)\)", span["background"]).group(1))
                assert alpha == pytest.approx(0.12 + 0.6 * min(1.0, -logprob / 5), abs=0.01)
            else:
                assert span["cls"] == "tok masked" and span["border"] == MASKED
                assert span["background"] == "rgb(244, 244, 245)"
    group = [r["reward"] for r in rows if r["task_id"] == episode["task_id"]]
    advantage = episode["reward"] - sum(group) / len(group)  # Dr. GRPO: no std division (the config's default)
    header = page.locator(".sample").first.text_content()
    assert f"reward {js_number(episode['reward'])} · advantage {js_number(advantage)}" in header
    assert "<|im_start|>" in "".join(span["text"] for span in tokens[0])  # decoded with the run's tokenizer
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "token_view.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000 and not page.errors


def test_model_output_with_markup_shows_as_text(tiny_run, server, page):
    episode = next(r for r in rows_of(tiny_run, 2) if "<i>" in r["question"])
    assert MARKUP_REPLY in episode["messages"]  # the scripted model really produced it
    open_episode(page, server, 2, episode["episode_id"])
    assert page.locator("dl.facts dd").first.text_content() == TASKS[0][0]
    assert page.locator("#main i").count() == 0
    replies = page.locator(".msg.assistant pre.content").all_text_contents()
    assert any(reply.startswith(MARKUP_REPLY) for reply in replies)
    made = ("[...document.querySelectorAll('#main script, #main b')]"
            ".filter(e => e.textContent.includes('alert') || e.textContent === 'bold?').length")
    assert page.evaluate(made) == 0  # no element was made from model output
    tokens = "".join(page.locator(".sample .tok").all_text_contents())
    assert "<script>alert(1)</script>" in tokens
    page.wait_for_timeout(300)
    assert page.dialogs == [] and not page.errors
    page.screenshot(path=str(ARTIFACTS / "markup_as_text.png"), full_page=True)


def test_two_iterations_side_by_side_for_the_same_task(tiny_run, server, page):
    task = rows_of(tiny_run, 1)[0]["task_id"]
    page.goto(server.url + "#/run/" + RUN.replace("/", "%2F"))
    page.select_option("#compare-a", "iter_1")
    page.select_option("#compare-b", "iter_2")
    page.click("#compare-go")
    page.wait_for_selector(".side .card")
    assert page.locator("#compare-task").input_value() == task
    left, right = page.locator('.side[data-set="iter_1"] .card'), page.locator('.side[data-set="iter_2"] .card')
    group = [r for r in rows_of(tiny_run, 1) if r["task_id"] == task]
    assert left.count() == right.count() == len(group)
    assert all(text.startswith(MARKUP_REPLY) for text in right.locator("pre").all_text_contents())


def test_a_new_iteration_appears_without_reloading(tiny_run, server, page):
    page.goto(server.url + "#/run/" + RUN.replace("/", "%2F"))
    page.wait_for_selector('a[data-set="iter_2"]')
    assert page.locator('a[data-set="iter_3"]').count() == 0
    shutil.copy(tiny_run / "judged" / "iter_2.parquet", tiny_run / "judged" / "iter_3.parquet")
    try:
        page.wait_for_selector('a[data-set="iter_3"]', timeout=15_000)  # the page polls every 3 s
        assert page.locator("#reward-curve circle[data-series=reward_mean]").count() == 3
    finally:
        (tiny_run / "judged" / "iter_3.parquet").unlink()
