"""The final policy is stored once: in MLflow, with only a pointer left in the run folder."""

from __future__ import annotations

import json

import mlflow
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM

from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.tracking.disk_use import RUN_BYTES, disk_use, folder_bytes
from reinflow.tracking.policy_model import POLICY_POINTER, store_final_policy


def test_the_final_policy_is_stored_once_and_loads_back(tmp_path):
    base = resolve_model(TINY_RANDOM_LLAMA)
    weights = AutoModelForCausalLM.from_pretrained(base).state_dict()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    run_dir = tmp_path / "run"

    model_uri = store_final_policy(weights, base, run_dir, uri, run_id, max_new_tokens=4)

    assert model_uri == f"runs:/{run_id}/policy"
    assert [path.name for path in run_dir.iterdir()] == [POLICY_POINTER]  # no weights, no scratch folder
    pointer = json.loads((run_dir / POLICY_POINTER).read_text())
    assert pointer["model_uri"] == model_uri and pointer["tracking_uri"] == uri
    weights_files = list((tmp_path / "mlartifacts").rglob("*.safetensors"))
    assert len(weights_files) == 1 and str(weights_files[0]).startswith(pointer["local_path"])
    assert AutoModelForCausalLM.from_pretrained(pointer["local_path"]) is not None
    # what the run leaves counts the logged model (once) and the pointer
    assert disk_use(client, run_id, run_dir)[RUN_BYTES] == folder_bytes(tmp_path / "mlartifacts") + folder_bytes(run_dir)
    mlflow.set_tracking_uri(uri)
    (completion,) = mlflow.pyfunc.load_model(model_uri).predict(["What is 2 + 3?"])
    assert isinstance(completion, str)
