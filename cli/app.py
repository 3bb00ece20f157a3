"""The ``reinflow`` command line.

Every verb that takes ``--conf`` also takes dotted overrides after it::

    reinflow prepare-data --conf configs/quickstart.yaml data.shard_size=100

Expected problems (a config typo, a missing file, an unknown model) print one line and exit 2,
never a traceback. This is the application layer: it calls the flows (imported when a verb runs,
so ``reinflow --help`` stays fast) and the library; nothing below imports it.
"""

from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.children import tie_prefect_server
from cli.preflight import check_eval_target, check_hub_target, check_resume, check_runs_dir
from reinflow.config import DataConfig, TrackingConfig, load_config
from reinflow.config.errors import ConfigError
from reinflow.data.shards import manifest_path
from reinflow.errors import ReinflowError, RunInterrupted, one_line
from reinflow.config.models import ModelResolutionError, resolve_model
from reinflow.run import environment
from reinflow.tracking.disk_use import RUN_BYTES, WRITTEN_BYTES, gigabytes
from reinflow.tracking.memory_use import PEAK_RSS_BYTES
from reinflow.run.preflight import check_data, check_experiment, check_task_index

app = typer.Typer(
    name="reinflow",
    help="Train AgentScope agents with GRPO: rollouts, judges, policy updates, tracked runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
model_app = typer.Typer(help="Built-in and hub models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
err = Console(stderr=True)
out = Console()

KNOWN_HUB_SUBSETS = {"openai/gsm8k": "main"}
"""Hub datasets that cannot be loaded without a subset, and the one users mean."""

ConfOption = Annotated[Path | None, typer.Option("--conf", "-c", help="Experiment YAML file.")]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=1e-6 data.shard_size=100.")
]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@model_app.command("fetch")
def model_fetch(name: Annotated[str, typer.Argument(help="builtin:smollm2-135m-instruct, a hub id or a folder.")]) -> None:
    """Resolve a model to a local folder (converting or downloading it once) and print the folder."""
    try:
        folder = resolve_model(name)
    except ModelResolutionError as error:
        _fail(str(error))
    out.print(f"{name} -> {folder}", highlight=False)


@app.command("prepare-data")
def prepare_data(
    conf: ConfOption = None,
    overrides: OverridesArg = None,
    target: Annotated[
        str | None,
        typer.Option(help="Hub dataset id (openai/gsm8k), a local .jsonl/.parquet file, or reasoning_gym:<name>."),
    ] = None,
    path: Annotated[Path | None, typer.Option(help="Output folder for the Parquet shards.")] = None,
    subset: Annotated[str | None, typer.Option(help="Hub dataset config name (openai/gsm8k: main).")] = None,
) -> None:
    """Download a dataset and write normalised Parquet shards (data/<name>/<split>/part-NNNNN.parquet)."""
    try:
        data = _data_config(conf, overrides or [], target, path, subset)
        tie_prefect_server()
        from flows.prepare_data import prepare_data as prepare_data_flow

        summary = prepare_data_flow(data, project_root=str(Path.cwd()))
    except ReinflowError as error:
        _fail(str(error))
    for split, info in summary.items():
        out.print(
            f"[green]{split}[/]: {info['rows']} rows in {info['shards']} shard(s), "
            f"{info['skipped']} skipped -> {info['manifest']}",
            highlight=False,
        )


@app.command("rollout")
def rollout(
    conf: Annotated[Path, typer.Option("--conf", "-c", help="Experiment YAML file.")],
    overrides: OverridesArg = None,
    task: Annotated[int, typer.Option("--task", help="Row of the train split to run (0-based).", min=0)] = 0,
    episodes: Annotated[int, typer.Option("--episodes", help="Episodes to run for that task.", min=1)] = 1,
) -> None:
    """Run one task in this process and print each episode turn by turn (breakpoints work)."""
    try:
        config = load_config(conf, overrides or [])
        check_data(config.data, Path.cwd(), str(conf))
        check_task_index(config.data, Path.cwd(), task)  # before the plugins are imported: it is quick
        check_experiment(config, Path.cwd(), str(conf))
        from reinflow.run.debug_rollout import debug_rollout, print_episode
        _prepare_data_if_missing(config.data)
        rows = debug_rollout(config, Path.cwd(), task, episodes)
    except ReinflowError as error:
        _fail(str(error))
    for row in rows:
        print_episode(out, row)


@app.command("train")
def train(
    conf: Annotated[Path, typer.Option("--conf", "-c", help="Experiment YAML file.")],
    overrides: OverridesArg = None,
    backbone: Annotated[str | None, typer.Option(help="debug (in-process) or ray; overrides the config.")] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue a run: its name, or 'latest' for the newest unfinished run of the experiment."),
    ] = None,
    with_logview: Annotated[
        bool, typer.Option("--with-logview", help="Also serve `reinflow logview` in the background (`reinflow stop` ends it).")
    ] = False,
) -> None:
    """Train: rollout → judge → GRPO update → checkpoint → evaluate, iteration after iteration."""
    settings = list(overrides or []) + ([f"backbone={backbone}"] if backbone else [])
    try:
        config = load_config(conf, settings)  # fail fast, before Prefect starts
        check_resume(config, Path.cwd(), resume)
        check_experiment(config, Path.cwd(), str(conf))
        if with_logview:
            _start_logview(Path.cwd() / config.tracking.run_dir)
        tie_prefect_server()  # its ephemeral server ends with this process, even a SIGKILLed one
        from flows.train import train as train_flow

        summary = train_flow(str(conf), settings, resume, project_root=str(Path.cwd()))
    except ReinflowError as error:
        _fail(str(error))
    except RunInterrupted as error:
        _fail(f"{one_line(error)} (what finished is kept: continue with `reinflow train --conf {conf} --resume latest`)")
    _print_summary(summary)


@app.command("eval")
def eval_(
    conf: Annotated[Path, typer.Option("--conf", "-c", help="Experiment YAML file.")],
    overrides: OverridesArg = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint folder (default: the newest of the experiment).")] = None,
    base_model: Annotated[bool, typer.Option("--base-model", help="Evaluate the untrained model.")] = False,
    pass_k: Annotated[int | None, typer.Option("--pass-k", min=1, help="k of pass@k (default: train.eval_pass_k).")] = None,
) -> None:
    """Held-out pass@1 (greedy) and pass@k (sampled) of a checkpoint or the base model."""
    try:
        check_eval_target(checkpoint, base_model)
        check_experiment(load_config(conf, overrides or []), Path.cwd(), str(conf))
        tie_prefect_server()
        from flows.evaluate import evaluate

        result = evaluate(str(conf), list(overrides or []), str(checkpoint) if checkpoint else None, pass_k,
                          base_model, project_root=str(Path.cwd()))
    except ReinflowError as error:
        _fail(str(error))
    out.rule(f"[bold]evaluation of {result['evaluated']}")
    for key, value in result.items():
        if key.startswith("pass_at"):
            out.print(f"{key:22s} {value:.4f}", highlight=False)
    out.print(f"episodes: {result['output']}", highlight=False)


@app.command("logview")
def logview(
    runs_dir: Annotated[Path | None, typer.Option(help="Folder of <experiment>/<run>/ run folders [default: runs].")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one [default: 0].")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1, loopback only].")] = None,
    register_as: Annotated[str | None, typer.Option(hidden=True, help="Record this process in a pid file.")] = None,
) -> None:
    """Serve a local web page over the runs: reward curves, episode tables, conversations, token views."""
    from pydantic import ValidationError

    from reinflow.logview.server import exposure_warning, serve
    from reinflow.logview.settings import LogviewSettings

    given = {"runs_dir": runs_dir, "port": port, "host": host}
    try:
        settings = LogviewSettings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as error:
        _fail(f"logview: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}")
    try:
        check_runs_dir(settings.runs_dir)
    except ReinflowError as error:
        _fail(str(error))
    warning = exposure_warning(settings.host)
    if warning:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    try:
        serve(settings, Path.cwd(), register_as,
              lambda url: out.print(f"logview of {settings.runs_dir}: {url}  (Ctrl-C to stop)", highlight=False))
    except OSError as error:
        _fail(f"logview: cannot listen on {settings.host}:{settings.port}: {error.strerror or error}")


@app.command("runs")
def runs(
    runs_dir: Annotated[Path | None, typer.Option(help="Folder of <experiment>/<run>/ run folders [default: the config's "
                                                       "tracking.run_dir, or runs].")] = None,
    conf: ConfOption = None,
) -> None:
    """List the runs: status (running, finished, crashed), iteration, held-out pass@1, how to resume."""
    from cli.runs import print_runs
    from reinflow.run.run_listing import run_rows

    try:
        folder = runs_dir or (load_config(conf).tracking.run_dir if conf else TrackingConfig().run_dir)
        check_runs_dir(folder, "runs")
    except ReinflowError as error:
        _fail(str(error))
    print_runs(out, folder, run_rows(folder, Path.cwd()))


@app.command("stop")
def stop(
    names: Annotated[list[str] | None, typer.Argument(help="Which registered processes (default: all).")] = None,
) -> None:
    """Stop the background processes reinflow started (e.g. `train --with-logview`), and only those."""
    from reinflow.run import pidfiles

    known = {record.name for record in pidfiles.records(Path.cwd())}
    unknown = sorted(set(names or []) - known)
    if unknown:
        _fail(f"stop: nothing registered as {', '.join(unknown)} (registered: {', '.join(sorted(known)) or 'none'})")
    results = pidfiles.stop(Path.cwd(), names)
    for result in results:
        record, where = result.record, result.record.info.get("url", "")
        if result.outcome == "stale":
            out.print(f"{record.name}: pid {record.pid} is no longer ours (ended or reused); removed its pid file", highlight=False)
        else:
            how = "stopped" if result.outcome == "terminated" else "killed (ignored SIGTERM)"
            out.print(f"{how} {record.name} (pid {record.pid}) {where}".rstrip(), highlight=False)
    if not results:
        out.print("nothing to stop", highlight=False)


def _prepare_data_if_missing(data: DataConfig) -> None:
    """Prepare the data as ``reinflow train`` does, where the train split has no shards yet."""
    if not manifest_path(Path.cwd() / data.path, data.train_split).is_file():
        tie_prefect_server()
        from flows.prepare_data import prepare_data as prepare_data_flow

        prepare_data_flow(data, project_root=str(Path.cwd()))


def _start_logview(runs_dir: Path) -> None:
    """The background logview, ended with this command if it is killed, kept (released) if it ends by itself."""
    from reinflow.logview.background import ensure_background_logview, release_background_logview

    url, started = ensure_background_logview(Path.cwd(), runs_dir)
    if started:
        atexit.register(release_background_logview, Path.cwd(), runs_dir)
    state = "started" if started else "already running"
    out.print(f"logview: {url} ({state}; `reinflow stop` ends it)", highlight=False)


def _print_summary(summary: dict) -> None:
    out.rule("[bold]training finished")
    out.print(f"run folder:      {summary['run_dir']}", highlight=False)
    out.print(f"iterations:      {summary['iterations']}", highlight=False)
    out.print(f"held-out pass@1: baseline {_score(summary['baseline_pass_at_1'])} -> final "
              f"{_score(summary['final_pass_at_1'])}", highlight=False)
    _print_tool_use(summary.get("tool_use") or {})
    stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in summary["stage_seconds"].items())
    out.print(f"wall time:       {summary['wall_seconds'] / 60:.1f} min ({stages}); "
              f"{100 * summary['outside_share']:.1f}% outside rollout/judge/update/evaluate", highlight=False)
    out.print(f"reward curve:    {summary['reward_curve']}", highlight=False)
    _print_disk(summary.get("disk") or {})
    _print_memory(summary.get("memory") or {})
    out.print(f"final policy:    {summary['model_uri']} (mlflow.pyfunc.load_model)", highlight=False)
    out.print(f"compare runs:    mlflow ui --backend-store-uri {summary['tracking_uri']}", highlight=False)
    out.print("see episodes:    reinflow logview   (conversations and token-level samples)", highlight=False)


def _print_disk(disk: dict) -> None:
    if RUN_BYTES not in disk:
        return
    written = f", {gigabytes(disk[WRITTEN_BYTES])} written by this process" if WRITTEN_BYTES in disk else ""
    out.print(f"disk:            {gigabytes(disk[RUN_BYTES])} left (run folder + MLflow artifacts){written}",
              highlight=False)


def _print_memory(memory: dict) -> None:
    if PEAK_RSS_BYTES in memory:
        out.print(f"memory:          {gigabytes(memory[PEAK_RSS_BYTES])} peak resident (the training process; "
                  "memory/* in MLflow per iteration)", highlight=False)


_TOOL_USE_LABELS = {
    "tool_call_share": "calls a tool", "malformed_tool_calls_per_episode": "malformed calls/episode",
    "answered_before_tool_result_share": "answers before result", "turns_per_episode": "turns/episode",
}


def _print_tool_use(tool_use: dict) -> None:
    """The held-out tool-use figures, baseline -> final, where the agent made any tool call."""
    used = [point[0] for key in ("tool_call_share", "malformed_tool_calls_per_episode")
            for point in (tool_use.get(key) or {}).values() if point is not None]
    if not any(value > 0 for value in used):
        return
    for key, label in _TOOL_USE_LABELS.items():
        points = tool_use.get(key) or {}
        out.print(f"  {label + ':':<24} baseline {_score(points.get('baseline'))} -> final "
                  f"{_score(points.get('final'))}", highlight=False)


def _score(point: tuple[float, float, float] | None) -> str:
    """``0.235 [0.180, 0.300]`` (95% interval), or ``n/a`` where no evaluation ran."""
    if point is None:
        return "n/a"
    value, low, high = point
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _data_config(
    conf: Path | None, overrides: list[str], target: str | None, path: Path | None, subset: str | None
) -> DataConfig:
    if conf is not None:
        if target is not None:
            raise ConfigError("give either --conf or --target, not both")
        data = load_config(conf, overrides).data
        check_data(data, Path.cwd(), str(conf))
        return data.model_copy(update={"path": path}) if path is not None else data
    if target is None or path is None:
        raise ConfigError("prepare-data needs --conf FILE, or --target DATASET and --path FOLDER")
    if overrides:
        raise ConfigError(f"overrides {overrides} need --conf")
    source = _source_for_target(target, subset)
    if source["type"] == "hub":
        check_hub_target(target, Path.cwd())
    return DataConfig.model_validate({"source": source, "path": path, **_single_split(source)})


def _source_for_target(target: str, subset: str | None) -> dict:
    if target.startswith("reasoning_gym:"):
        raise ConfigError(
            "reasoning-gym sources need sizes per split: put them in a config "
            "(data.source.type: reasoning_gym) and use --conf"
        )
    local = Path(target)
    if local.suffix in (".jsonl", ".parquet"):
        if not local.is_file():
            raise ConfigError(f"--target {target}: no such file")
        split = local.stem if local.stem in ("train", "test", "validation") else "train"
        return {"type": "local", "files": {split: local}}
    return {"type": "hub", "name": target, "subset": subset or KNOWN_HUB_SUBSETS.get(target)}


def _single_split(source: dict) -> dict:
    """A one-file local target trains and evaluates on its only split."""
    if source["type"] != "local":
        return {}
    (split,) = source["files"]
    return {"train_split": split, "eval_split": split}


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failing flow's exception with its traceback; a ReinflowError's message says
    all the user needs (and the CLI prints it last, in one line), so its traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ReinflowError):
            record.exc_info, record.exc_text = None, None
        return True


def main() -> None:
    """Entry point: environment defaults first, then the command."""
    environment.apply_defaults()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForUserErrors())
    app()


if __name__ == "__main__":
    sys.exit(main())
