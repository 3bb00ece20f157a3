"""The iteration subflows run without a heartbeat thread; the train flow keeps its own
(``flows/subflow_heartbeat.py``)."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

from flows.subflow_heartbeat import without_subflow_heartbeat

pytestmark = pytest.mark.usefixtures("prefect_harness")


@flow
def heartbeat_of_a_subflow() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


@flow
def parent() -> dict[str, int | None]:
    seen = {"before": heartbeat_of_a_subflow()}
    with without_subflow_heartbeat():
        seen["inside"] = heartbeat_of_a_subflow()
    seen["after"] = heartbeat_of_a_subflow()
    seen["parent"] = get_current_settings().flows.heartbeat_frequency
    return seen


def test_only_the_subflows_started_inside_the_block_lose_their_heartbeat():
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):  # Prefect's default (the harness turns it off)
        assert parent() == {"before": 180, "inside": None, "after": 180, "parent": 180}
