"""Records what every Prefect flow and task call of a run receives, whatever the Prefect release.

Imported before the CLI by a `reinflow train` subprocess (``helpers.train_run.train(preload=...)``)
whose environment names a file in ``REINFLOW_PARAMETER_PROBE``: each call of a flow or task appends
one JSON line per argument (``kind``, ``name``, ``parameter``, ``type``, ``plain``), then the call
goes on unchanged.
"""

from __future__ import annotations

from reinflow.run import environment

environment.apply_defaults()

import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from prefect import Flow, Task  # noqa: E402

from helpers.plain_values import plain_value  # noqa: E402

PROBE_ENV = "REINFLOW_PARAMETER_PROBE"
PREFECT_KEYWORDS = ("return_state", "wait_for")


def record(kind: str, name: str, fn: Any, args: tuple, kwargs: dict) -> None:
    own = {key: value for key, value in kwargs.items() if key not in PREFECT_KEYWORDS}
    bound = inspect.signature(fn).bind_partial(*args, **own)
    with open(os.environ[PROBE_ENV], "a", encoding="utf-8") as out:
        for parameter, value in bound.arguments.items():
            out.write(json.dumps({"kind": kind, "name": name, "parameter": parameter,
                                  "type": f"{type(value).__module__}.{type(value).__qualname__}",
                                  "plain": plain_value(value)}) + "\n")


def probed(kind: str, original: Any) -> Any:
    def call(self, *args, **kwargs):
        record(kind, self.name, self.fn, args, kwargs)
        return original(self, *args, **kwargs)

    return call


def install() -> None:
    Flow.__call__ = probed("flow", Flow.__call__)
    Task.__call__ = probed("task", Task.__call__)


if os.environ.get(PROBE_ENV):
    install()
