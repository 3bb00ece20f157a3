"""The front door for workflow authors: ``from reinflow.workflow import Workflow, WorkflowOutput, Task``.

The classes live in :mod:`reinflow.rollout.workflow` (the rollout wing runs them); this module and
the package root (``from reinflow import Workflow``) are where users import them from.
"""

from reinflow.rollout.workflow import Task, Workflow, WorkflowOutput

__all__ = ["Task", "Workflow", "WorkflowOutput"]
