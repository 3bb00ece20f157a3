"""``reinflow runs``: a table of the runs under a runs folder, then how to resume each one that
stopped before its end (``reinflow.run.run_listing`` reads the folders; this prints them)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from reinflow.run.run_listing import RunRow

STATUS_STYLES = {"running": "cyan", "finished": "green", "crashed": "bold red"}


def runs_table(rows: list[RunRow]) -> Table:
    """One line per run: experiment, run, status, iteration reached of total, newest complete
    checkpoint, newest held-out pass@1 and its iteration."""
    table = Table(show_edge=False, pad_edge=False, highlight=False)
    widths = {"run": max((len(row.name) for row in rows), default=3), "status": max((len(row.status) for row in rows), default=6)}
    table.add_column("experiment", overflow="fold")  # folds on a narrow terminal; the other columns are never cut
    for column in ("run", "status", "iter", "ckpt", "pass@1 (iter)"):
        table.add_column(column, no_wrap=True, min_width=widths.get(column, len(column)))
    for row in rows:
        style = STATUS_STYLES.get(row.status, "yellow")
        table.add_row(row.experiment, row.name, f"[{style}]{row.status}[/]", progress(row),
                      "-" if row.checkpoint is None else str(row.checkpoint), held_out(row))
    return table


def progress(row: RunRow) -> str:
    """``3/10``: the newest judged iteration of the run's total (``?`` where unknown)."""
    total = "?" if row.iterations is None else str(row.iterations)
    return f"{row.iteration or 0}/{total}"


def held_out(row: RunRow) -> str:
    """``0.250 (2)``: the newest held-out pass@1 and its iteration; ``-`` where none was judged yet."""
    return "-" if row.pass_at_1 is None else f"{row.pass_at_1:.3f} ({row.pass_at_1_iteration})"


def print_runs(out: Console, runs_dir: Path, rows: list[RunRow]) -> None:
    """The table, then one resume command per run that stopped before its end."""
    if not rows:
        out.print(f"no runs under {runs_dir} (a run folder is <experiment>/<run>/run.json)", highlight=False)
        return
    out.print(runs_table(rows))
    to_resume = [row for row in rows if row.resume]
    if to_resume:
        out.print("\nto resume:", highlight=False)
    for row in to_resume:
        out.print(f"  {row.experiment}/{row.name} ({row.status}): {row.resume}", highlight=False, soft_wrap=True)
