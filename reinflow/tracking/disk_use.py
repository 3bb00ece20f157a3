"""Disk use of a training run: what it leaves (run folder + its MLflow artifacts) and what it wrote.

- ``disk/run_bytes``: the apparent size (sum of file sizes) of the run folder plus the run's MLflow
  artifacts and logged models, where the artifact store is a local folder;
- ``disk/written_bytes``: bytes this process wrote to disk since it started, its finished children
  included: Linux's ``/proc/self/io`` ``write_bytes`` less ``cancelled_write_bytes`` (pages
  dirtied and then truncated before they reached the disk: a temporary file deleted at once).
  Absent where the kernel does not provide it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:  # the CLI imports this module to print the summary: no MLflow import there
    from mlflow import MlflowClient

RUN_BYTES = "disk/run_bytes"
WRITTEN_BYTES = "disk/written_bytes"


def folder_bytes(folder: Path) -> int:
    """Sum of the sizes of the regular files under ``folder`` (0 where it does not exist); links
    are not followed and files that vanish while counting are skipped."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(parent, name))
            except FileNotFoundError:
                continue
            total += stat.st_size
    return total


def written_bytes(io_file: Path = Path("/proc/self/io")) -> int | None:
    """``write_bytes - cancelled_write_bytes`` of ``io_file``, or None where it cannot be read."""
    try:
        fields = dict(line.split(": ", 1) for line in io_file.read_text().splitlines() if ": " in line)
        return int(fields["write_bytes"]) - int(fields.get("cancelled_write_bytes", 0))
    except (OSError, KeyError, ValueError):
        return None


def artifact_folders(client: MlflowClient, run_id: str) -> list[Path]:
    """The local folders of the run's MLflow artifacts and of its logged models (the final policy);
    artifacts in a remote store are not counted."""
    run = client.get_run(run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'")
    uris = [run.info.artifact_uri] + [model.artifact_location for model in models]
    return [Path(unquote(urlparse(uri).path)) for uri in uris if uri and uri.startswith("file:")]


def disk_use(client: MlflowClient, run_id: str, run_dir: Path) -> dict[str, float]:
    """``{RUN_BYTES: ..., WRITTEN_BYTES: ...}`` now (the second only where the kernel counts it)."""
    left = folder_bytes(run_dir) + sum(folder_bytes(folder) for folder in artifact_folders(client, run_id))
    written = written_bytes()
    return {RUN_BYTES: float(left)} | ({WRITTEN_BYTES: float(written)} if written is not None else {})


def gigabytes(count: float) -> str:
    """``2147483648`` → ``'2.15 GB'`` (decimal gigabytes)."""
    return f"{count / 1e9:.2f} GB"
