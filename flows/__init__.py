"""Prefect flows: prepare_data (download → Parquet shards), train (the iteration loop), evaluate.

Importing this package applies reinflow's environment defaults (``reinflow/run/environment.py``):
a Prefect worker running a deployment loads a flow file without going through the CLI, so each
flow file imports this package first, before anything loads torch, MLflow or Ray.
"""

from reinflow.run import environment

environment.apply_defaults()
