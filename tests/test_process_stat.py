"""``/proc/<pid>/stat`` fields: split after the command name, whatever it holds, and None where absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reinflow.run.owner import process_start_ticks, zombie
from reinflow.tracking.process_stat import PARENT_PID, START_TICKS, STATE, stat_fields

LINUX = Path("/proc/self/stat").exists()


def test_fields_start_after_the_last_parenthesis_of_an_odd_command_name(tmp_path):
    (tmp_path / "42").mkdir()
    ticks = " ".join(str(n) for n in range(5, 22))  # fields 5..21, then field 22 (start time) = 777
    (tmp_path / "42" / "stat").write_text(f"42 (a) b (c) S 7 {ticks} 777 0 0\n")
    fields = stat_fields(42, tmp_path)
    assert fields[STATE] == "S"
    assert fields[PARENT_PID] == "7"
    assert fields[START_TICKS] == "777"


def test_a_process_that_is_not_there_has_no_fields(tmp_path):
    assert stat_fields(42, tmp_path) is None


@pytest.mark.skipif(not LINUX, reason="needs /proc")
def test_this_process_reads_as_running_with_its_real_parent_and_a_zombie_as_ended():
    fields = stat_fields(os.getpid())
    assert int(fields[PARENT_PID]) == os.getppid()
    assert process_start_ticks(os.getpid()) == int(fields[START_TICKS]) > 0
    assert not zombie(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while stat_fields(child.pid)[STATE] not in ("Z", "X"):  # exited, not yet collected
        os.sched_yield()
    assert zombie(child.pid)
    child.wait()
    assert zombie(child.pid)  # collected: no process left to read
