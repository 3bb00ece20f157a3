"""Broken configs through the real CLI: exit status 2 and exactly one line on stderr naming the culprit.

Each row mutates a valid experiment YAML (or the files it names) and lists the fragments the one
error line must hold: the config file and the key path, or the class path. Every row fails before
Prefect starts (``reinflow.run.preflight``), so none of them costs a flow run.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app
from reinflow.config import load_config
from reinflow.run.preflight import check_experiment

PROMISE = "bad config: one-line error naming the culprit"

PLUGINS = {
    "relplug_syntax.py": "def broken(:\n    pass\n",
    "relplug_raises.py": "raise RuntimeError('boom at import')\n",
    "relplug_classes.py": (
        "from reinflow import Judge, Workflow\n\n"
        "class NoRun(Workflow):\n    pass\n\n"
        "class NotAWorkflow:\n    async def run(self, task, model):\n        return None\n\n"
        "class JudgeWithoutComputeReward:\n    def judge(self, judge_input):\n        return 1.0, True\n\n"
        "class AbstractJudge(Judge):\n    pass\n\n"
        "def not_a_class():\n    pass\n"
    ),
}


def base_config(root: Path) -> dict:
    return {
        "experiment": "bad_input",
        "data": {"source": {"type": "local", "files": {"train": str(root / "tasks.jsonl"), "test": str(root / "tasks.jsonl")}},
                 "path": str(root / "shards"), "tasks_per_iteration": 2},
        "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent", "group_size": 2,
                    "max_new_tokens_per_turn": 8, "max_model_len": 256},
        "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
        "model": {"path": "builtin:tiny-random-llama"},
        "train": {"iterations": 1, "eval_pass_k": 1},
        "tracking": {"run_dir": str(root / "runs")},
    }


def setting(*pairs: tuple[str, object]):
    """A mutation that sets dotted keys (a value of DELETE removes the key)."""

    def mutate(config: dict, root: Path) -> None:
        for dotted, value in pairs:
            *parents, last = dotted.split(".")
            node = config
            for part in parents:
                node = node.setdefault(part, {})
            if value is DELETE:
                node.pop(last)
            else:
                node[last] = value

    return mutate


DELETE = object()


def command(argv: list[str]):
    """A mutation that runs ``argv`` per episode (``rollout.workflow_command``) instead of the workflow class."""
    return setting(("rollout.workflow", DELETE), ("rollout.workflow_command", argv))


def missing_dataset(config: dict, root: Path) -> None:
    config["data"]["source"]["files"]["train"] = str(root / "gone.jsonl")


def data_path_is_a_file(config: dict, root: Path) -> None:
    (root / "shards").write_text("not a folder")


RG = {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 4, "test": 4}}

# (id, mutation, fragments the one error line must contain)
ROWS = [
    ("unknown_top_level_key", setting(("epochs", 3)), ["bad.yaml: epochs: unknown key"]),
    ("unknown_nested_key", setting(("rollout.grup_size", 3)),
     ["bad.yaml: rollout.grup_size: unknown key (did you mean 'group_size'?)"]),
    ("unknown_key_in_source", setting(("data.source.filez", {})), ["bad.yaml: data.source.filez: unknown key"]),
    ("missing_required_section", setting(("judge", DELETE)), ["bad.yaml: judge: required key is missing"]),
    ("wrong_type_string_for_float", setting(("train.lr", "fast")), ["bad.yaml: train.lr:", "'fast'"]),
    ("wrong_type_list_for_int", setting(("rollout.group_size", [4])), ["bad.yaml: rollout.group_size:"]),
    ("out_of_range_lr", setting(("train.lr", 5.0)), ["bad.yaml: train.lr:", "less than or equal to 1"]),
    ("out_of_range_temperature", setting(("rollout.temperature", -1)), ["bad.yaml: rollout.temperature:"]),
    ("group_size_one", setting(("rollout.group_size", 1)), ["bad.yaml: rollout.group_size:", "greater than or equal to 2"]),
    ("lora_options_with_full_tuning", setting(("model.tuning", {"type": "full", "rank": 8})),
     ["bad.yaml: model.tuning.rank: unknown key"]),
    ("unknown_tuning_type", setting(("model.tuning", {"type": "qlora"})), ["bad.yaml: model.tuning:", "qlora"]),
    ("concurrency_below_group_size", setting(("rollout.concurrency", 1)), ["bad.yaml:", "rollout.concurrency (1)"]),
    ("greedy_training", setting(("rollout.temperature", 0)), ["bad.yaml:", "rollout.temperature is 0"]),
    ("iteration_larger_than_split", setting(("data.source", RG), ("data.tasks_per_iteration", 8)),
     ["bad.yaml: data:", "tasks_per_iteration (8)"]),
    ("turn_longer_than_context", setting(("rollout.max_new_tokens_per_turn", 512)),
     ["bad.yaml: rollout:", "max_new_tokens_per_turn (512)"]),
    ("debug_backbone_with_workers", setting(("train.workers", 2)), ["bad.yaml:", "train.workers is 2"]),
    ("eval_split_not_in_source", setting(("data.eval_split", "validation")), ["bad.yaml: data:", "eval_split 'validation'"]),
    ("missing_local_dataset", missing_dataset, ["bad.yaml: data.source.files.train: no such file", "gone.jsonl"]),
    ("data_path_is_a_file", data_path_is_a_file, ["bad.yaml: data.path:", "is a file, not a folder"]),
    ("workflow_module_missing", setting(("rollout.workflow", "relplug_nowhere->Agent")),
     ["bad.yaml: rollout.workflow:", "'relplug_nowhere->Agent'", "cannot import module 'relplug_nowhere'"]),
    ("workflow_module_syntax_error", setting(("rollout.workflow", "relplug_syntax->Agent")),
     ["bad.yaml: rollout.workflow:", "'relplug_syntax->Agent'", "SyntaxError"]),
    ("workflow_module_raises_on_import", setting(("rollout.workflow", "relplug_raises->Agent")),
     ["bad.yaml: rollout.workflow:", "RuntimeError: boom at import"]),
    ("workflow_class_missing", setting(("rollout.workflow", "relplug_classes->Nope")),
     ["bad.yaml: rollout.workflow:", "module 'relplug_classes' has no class 'Nope'"]),
    ("workflow_is_a_function", setting(("rollout.workflow", "relplug_classes:not_a_class")),
     ["bad.yaml: rollout.workflow:", "has no class 'not_a_class'"]),
    ("workflow_without_run", setting(("rollout.workflow", "relplug_classes->NoRun")),
     ["bad.yaml: rollout.workflow:", "class NoRun does not implement run"]),
    ("workflow_not_a_workflow", setting(("rollout.workflow", "relplug_classes->NotAWorkflow")),
     ["bad.yaml: rollout.workflow:", "NotAWorkflow must subclass reinflow.Workflow"]),
    ("judge_without_compute_reward", setting(("judge.protocol", "relplug_classes->JudgeWithoutComputeReward")),
     ["bad.yaml: judge.protocol:", "lacks the method(s) compute_reward"]),
    ("judge_abstract", setting(("judge.protocol", "relplug_classes->AbstractJudge")),
     ["bad.yaml: judge.protocol:", "class AbstractJudge does not implement compute_reward"]),
    ("judge_path_malformed", setting(("judge.protocol", "judges/math_answer.py")), ["bad.yaml: judge.protocol:", "pattern"]),
    ("workflow_command_not_on_path", command(["no-such-agent", "--fast"]),
     ["bad.yaml: rollout.workflow_command: 'no-such-agent' is not on $PATH"]),
    ("workflow_command_file_missing", command(["./agents/no_such_agent.py"]),
     ["bad.yaml: rollout.workflow_command: no executable file", "no_such_agent.py"]),
    ("workflow_command_not_executable", command(["./tasks.jsonl"]),
     ["bad.yaml: rollout.workflow_command: no executable file", "tasks.jsonl"]),
    ("workflow_command_empty", command([]), ["bad.yaml: rollout.workflow_command:", "at least 1 item"]),
    ("workflow_and_workflow_command", setting(("rollout.workflow_command", ["python", "agent.py"])),
     ["bad.yaml: rollout:", "set exactly one of workflow", "workflow and workflow_command is set"]),
    ("warmup_demonstrations_missing", setting(("warmup", {"demonstrations": "demos/none.jsonl"})),
     ["bad.yaml: warmup.demonstrations: no such file:", "none.jsonl"]),
    ("warmup_demonstrations_wrong_suffix", setting(("warmup", {"demonstrations": "tasks.csv"})),
     ["bad.yaml: warmup:", "'tasks.csv' must end in .jsonl or .parquet"]),
    ("warmup_from_run_missing", setting(("warmup", {"from_run": "runs/old/none"})),
     ["bad.yaml: warmup.from_run: no such run folder or judged file:", "none"]),
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the CLI's cwd) with a one-row dataset and the broken plugin modules."""
    (tmp_path / "tasks.jsonl").write_text('{"question": "1 + 1?", "answer": "2"}\n')
    for name, text in PLUGINS.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(root: Path, config: dict) -> Path:
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_one_line_error(exit_code: int, stderr: str, fragments: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_base_config_is_valid(project: Path) -> None:
    """The control: without a mutation the config loads and passes every pre-flight check."""
    path = write_config(project, base_config(project))
    check_experiment(load_config(path), project, str(path))


@pytest.mark.reliability(PROMISE, tried="unknown/missing keys, wrong types, out-of-range values, impossible "
                                        "combinations, missing files, unimportable or incomplete workflow/judge classes, "
                                        "a workflow_command that is not on $PATH, missing, not executable or empty, "
                                        "a missing or misnamed warm-start demonstrations file or earlier run")
@pytest.mark.parametrize(("mutate", "fragments"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_broken_config_is_one_line(project: Path, mutate, fragments: list[str]) -> None:
    config = copy.deepcopy(base_config(project))
    mutate(config, project)
    path = write_config(project, config)
    result = CliRunner().invoke(app, ["train", "--conf", str(path)])
    assert_one_line_error(result.exit_code, result.stderr, fragments)
    assert result.stdout == ""
    assert not (project / "runs").exists()  # refused before anything was written


FILE_ROWS = [
    ("config_file_missing", None, ["nope.yaml: no such config file"]),
    ("yaml_syntax_error", b"rollout: [unclosed\n", ["bad.yaml: not valid YAML:", "(line 2, column 1)"]),
    ("yaml_not_utf8", b"experiment: caf\xe9\n", ["bad.yaml: not valid UTF-8 text"]),
    ("yaml_top_level_list", b"- a\n- b\n", ["bad.yaml: expected a mapping of sections at the top level, got list"]),
]


@pytest.mark.reliability(PROMISE, tried="missing config file, YAML syntax error, non-UTF-8 config, non-mapping YAML")
@pytest.mark.parametrize(("content", "fragments"), [row[1:] for row in FILE_ROWS], ids=[row[0] for row in FILE_ROWS])
def test_broken_config_file_is_one_line(project: Path, content: bytes | None, fragments: list[str]) -> None:
    path = project / ("bad.yaml" if content is not None else "nope.yaml")
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(app, ["train", "--conf", str(path)])
    assert_one_line_error(result.exit_code, result.stderr, fragments)


@pytest.mark.reliability(PROMISE, tried="bad dotted override on the command line")
@pytest.mark.parametrize(("override", "fragments"), [
    ("train.lr=abc", ["bad.yaml: train.lr:", "'abc'"]),
    ("rollout.max_turns=0", ["bad.yaml: rollout.max_turns:", "greater than or equal to 1"]),
    ("train.iterations.value=1", ["bad.yaml: override 'train.iterations.value=1': 'train.iterations' is a value, not a section"]),
    ("novalue", ["override 'novalue': expected dotted.key=value"]),
])
def test_broken_override_is_one_line(project: Path, override: str, fragments: list[str]) -> None:
    path = write_config(project, base_config(project))
    result = CliRunner().invoke(app, ["train", "--conf", str(path), override])
    assert_one_line_error(result.exit_code, result.stderr, fragments)


@pytest.mark.reliability(PROMISE, tried="the installed `reinflow` command in a subprocess (real stderr)")
@pytest.mark.parametrize("row_id", ["unknown_nested_key", "workflow_module_raises_on_import", "judge_abstract"])
def test_real_command_prints_one_line(project: Path, row_id: str) -> None:
    _, mutate, fragments = next(row for row in ROWS if row[0] == row_id)
    config = copy.deepcopy(base_config(project))
    mutate(config, project)
    path = write_config(project, config)
    stdout, stderr = project / "stdout.txt", project / "stderr.txt"
    command = [sys.executable, "-c", "from cli.app import main; main()", "train", "--conf", str(path)]
    with stdout.open("w") as out, stderr.open("w") as err:
        done = subprocess.run(command, cwd=project, stdout=out, stderr=err, timeout=120,
                              env={**os.environ, "COLUMNS": "80"})
    assert_one_line_error(done.returncode, stderr.read_text(), fragments)


CLI_PROMISE = "bad command-line input: one line, exit 2, before Prefect starts"
LOADED_PREFECT = "PREFECT WAS LOADED"
# The real command in a subprocess that says on stderr, as it exits, whether Prefect was imported.
WATCHED_CLI = [sys.executable, "-c", "import atexit, sys; atexit.register(lambda: 'prefect' in sys.modules and "
               f"sys.stderr.write('{LOADED_PREFECT}\\n')); from cli.app import main; main()"]


def no_change(config: dict, root: Path) -> None:
    pass


# (id, config mutation, arguments after `reinflow` (bad.yaml is the mutated base config), fragments of the error line)
CLI_ROWS = [
    ("model_path_missing_folder", no_change, ["train", "--conf", "bad.yaml", "model.path=/nonexistent"],
     ["bad.yaml: model.path: model '/nonexistent': no such folder", "not a Hugging Face hub id"]),
    ("model_path_not_a_hub_id", no_change, ["train", "--conf", "bad.yaml", "model.path=org//model"],
     ["model.path: model 'org//model': no such folder", "not a Hugging Face hub id"]),
    ("model_path_missing_under_local_folder", no_change, ["train", "--conf", "bad.yaml", "model.path=not_a_model/gone"],
     ["model.path: model 'not_a_model/gone': no such folder"]),
    ("model_folder_without_config", no_change, ["eval", "--conf", "bad.yaml", "model.path=not_a_model"],
     ["model.path: model folder", "has no config.json"]),
    ("model_unknown_builtin", no_change, ["rollout", "--conf", "bad.yaml", "model.path=builtin:nope"],
     ["model.path: unknown built-in model 'builtin:nope'"]),
    ("rollout_task_past_local_file", no_change, ["rollout", "--conf", "bad.yaml", "--task", "99999999"],
     ["--task 99999999: the train split has at most 1 tasks (rows 0 to 0)"]),
    ("rollout_task_past_reasoning_gym_size", setting(("data.source", RG)), ["rollout", "--conf", "bad.yaml", "--task", "4"],
     ["--task 4: the train split has 4 tasks (rows 0 to 3)"]),
    ("resume_unknown_run", no_change, ["train", "--conf", "bad.yaml", "--resume", "no-such-run"],
     ["--resume: no run 'no-such-run' of experiment 'bad_input'"]),
    ("resume_latest_without_runs", no_change, ["train", "--conf", "bad.yaml", "--resume", "latest"],
     ["--resume: no unfinished run of experiment 'bad_input'"]),
    ("eval_checkpoint_missing", no_change, ["eval", "--conf", "bad.yaml", "--checkpoint", "/nonexistent"],
     ["--checkpoint /nonexistent: no such folder: /nonexistent"]),
    ("eval_checkpoint_incomplete", no_change, ["eval", "--conf", "bad.yaml", "--checkpoint", "not_a_checkpoint"],
     ["--checkpoint not_a_checkpoint:", "is not a complete checkpoint (no COMPLETE marker"]),
    ("eval_checkpoint_and_base_model", no_change, ["eval", "--conf", "bad.yaml", "--checkpoint", "x", "--base-model"],
     ["give either --checkpoint or --base-model, not both"]),
    ("prepare_data_target_not_a_dataset_id", no_change, ["prepare-data", "--target", "bogus//dataset", "--path", "out"],
     ["--target 'bogus//dataset': no such file or folder, and not a Hugging Face dataset id"]),
    ("prepare_data_target_unknown_offline", no_change, ["prepare-data", "--target", "bogus/dataset", "--path", "out"],
     ["--target hub dataset 'bogus/dataset' is not in the local cache"]),
    ("logview_runs_dir_missing", no_change, ["logview", "--runs-dir", "/nonexistent"],
     ["logview: --runs-dir /nonexistent: no such folder"]),
    ("logview_runs_dir_is_a_file", no_change, ["logview", "--runs-dir", "tasks.jsonl"],
     ["logview: --runs-dir tasks.jsonl: is a file, not a folder"]),
]


@pytest.mark.reliability(CLI_PROMISE, tried="missing or malformed model path, --task past the split, --resume of no "
                                            "run, missing/incomplete --checkpoint, unknown --target dataset, missing "
                                            "--runs-dir: the installed command in a subprocess, timed")
@pytest.mark.parametrize(("mutate", "arguments", "fragments"), [row[1:] for row in CLI_ROWS], ids=[row[0] for row in CLI_ROWS])
def test_bad_command_line_is_one_line_before_prefect(project: Path, mutate, arguments: list[str], fragments: list[str]) -> None:
    (project / "not_a_model").mkdir()
    (project / "not_a_checkpoint").mkdir()
    config = copy.deepcopy(base_config(project))
    mutate(config, project)
    write_config(project, config)
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    started = time.monotonic()
    done = subprocess.run([*WATCHED_CLI, *arguments], cwd=project, capture_output=True, text=True, timeout=60, env=env)
    seconds = time.monotonic() - started
    assert LOADED_PREFECT not in done.stderr, "the error came after Prefect was imported"
    assert_one_line_error(done.returncode, done.stderr, fragments)
    assert seconds < 10, f"took {seconds:.1f} s"
    assert not (project / "runs").exists() and not (project / "shards").exists() and not (project / "out").exists()
