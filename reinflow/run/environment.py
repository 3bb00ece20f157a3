"""The process environment a reinflow run needs, set once before torch, MLflow, Ray or Prefect load.

The one place these defaults live: the CLI applies them first thing, the flows apply them when a
Prefect worker loads them without the CLI (a deployment), and the test suite applies them in its
``conftest.py``. A value the user already set always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

RUNTIME_ENVIRONMENT = {
    "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads made everything 3-6x slower on 2 cores
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the ephemeral server is slow to start on 2 cores
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",  # its threads fight the trainer's for 2 cores, and warn after a fork
}
"""Environment defaults of every reinflow process."""


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of :data:`RUNTIME_ENVIRONMENT` that ``environ`` does not set already.

    >>> env = {"OMP_WAIT_POLICY": "ACTIVE"}
    >>> apply_defaults(env)
    >>> env["OMP_WAIT_POLICY"], env["MLFLOW_DISABLE_TELEMETRY"]
    ('ACTIVE', 'true')
    """
    for key, value in RUNTIME_ENVIRONMENT.items():
        environ.setdefault(key, value)
