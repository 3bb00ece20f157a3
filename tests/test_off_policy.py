"""reinflow.run.off_policy: which rollouts run ahead of the update, and how stale an update's samples are."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reinflow.run.off_policy import iterations_to_roll_ahead, staleness_metrics


@pytest.mark.parametrize("iteration, last, k, ready, expected", [
    (1, 10, 0, set(), []),            # on-policy: nothing ahead
    (1, 10, 1, set(), [2]),
    (1, 10, 3, set(), [2, 3, 4]),
    (2, 10, 3, {3, 4}, [5]),          # the steady state: one new rollout beside each update
    (9, 10, 3, set(), [10]),          # never past the last iteration
    (10, 10, 2, set(), []),
])
def test_iterations_to_roll_ahead(iteration, last, k, ready, expected):
    assert iterations_to_roll_ahead(iteration, last, k, ready) == expected


def write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_staleness_counts_updates_between_the_sampling_weights_and_the_update_start(tmp_path):
    judged = write(tmp_path / "iter_5.parquet", policy_version=pa.array([3, 3, 4, None], pa.int32()))
    # the update of iteration 5 starts from update 4's weights: versions 3, 3, 4 are 1, 1, 0 behind
    assert staleness_metrics(judged, 5) == {"staleness_mean": pytest.approx(2 / 3), "staleness_max": 1.0}


def test_files_without_versions_report_no_staleness(tmp_path):
    assert staleness_metrics(write(tmp_path / "old.parquet", task_id=["a", "b"]), 2) == {}
    assert staleness_metrics(write(tmp_path / "nulls.parquet", policy_version=pa.array([None], pa.int32())), 2) == {}
