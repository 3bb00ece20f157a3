"""reinflow: train AgentScope agents with GRPO on a Prefect pipeline."""

__version__ = "0.1.0"
