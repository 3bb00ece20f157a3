"""A judge that notes what it received (``judge.protocol: helpers.judge_probe->FinalAnswerProbe``).

Each call appends one JSON line to the file named in ``REINFLOW_JUDGE_PROBE``: the input's keys, the
task id, ``final_answer`` and the number of ``grouped_steps``. Its reward is a learning signal any
policy gets (like ``tests.e2e_judges.ParityJudge``), but on the final answer: 1 when
``final_answer`` has an even number of characters.
"""

from __future__ import annotations

import json
import os
import threading

from reinflow import Judge

PROBE_ENV = "REINFLOW_JUDGE_PROBE"
_lock = threading.Lock()


class FinalAnswerProbe(Judge):
    def compute_reward(self, judge_input_dictionary):
        final_answer = judge_input_dictionary["final_answer"]
        line = json.dumps({
            "keys": sorted(judge_input_dictionary), "task_id": judge_input_dictionary["workflow_task"].task_id,
            "final_answer": final_answer, "steps": len(judge_input_dictionary["grouped_steps"]),
        })
        with _lock, open(os.environ[PROBE_ENV], "a", encoding="utf-8") as out:
            out.write(line + "\n")
        success = len(final_answer or "") % 2 == 0
        return float(success), success
