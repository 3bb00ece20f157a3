"""The final policy as an MLflow model that loads back and generates.

``mlflow.pyfunc.load_model("runs:/<run id>/policy").predict(["What is 2+3?"])`` returns one
greedy completion per prompt (chat template applied), at most ``rollout.max_new_tokens_per_turn``
tokens long: what the policy was trained to answer in. The weights are a plain transformers folder
(LoRA merged), so ``AutoModelForCausalLM.from_pretrained`` on the artifact works too.

The policy is stored once, in MLflow (``store_final_policy``); the run folder keeps only
``final_policy.json``, a pointer to the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
import torch

POLICY_POINTER = "final_policy.json"
"""The run folder's pointer to its final policy: ``{"model_uri", "tracking_uri", "local_path"}``."""
POLICY_ARTIFACT = "policy"
"""The artifact path of the policy model in its MLflow run (``runs:/<run id>/policy``)."""


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Greedy chat completions from the saved policy folder, ``max_new_tokens`` at most (pickled
    with the model when it is logged)."""

    def __init__(self, max_new_tokens: int) -> None:
        self.max_new_tokens = max_new_tokens

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = context.artifacts[POLICY_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> list[str]:
        prompts = list(model_input["prompt"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        return [self._complete(prompt) for prompt in prompts]

    def _complete(self, prompt: str) -> str:
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def policy_model(weights: dict[str, torch.Tensor], base_folder: Path) -> Any:
    """The base model's architecture holding ``weights`` (full, merged), in float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise ValueError(f"policy weights do not fit {base_folder}: missing={missing} unexpected={unexpected}")
    return model


def save_policy_folder(model: Any, base_folder: Path, output: Path, *, with_weights: bool = True) -> Path:
    """Write ``model`` as a transformers folder beside the base model's tokenizer (without the
    weights file when not ``with_weights``: config, generation config and tokenizer only)."""
    from transformers import AutoTokenizer

    if with_weights:
        model.save_pretrained(output, safe_serialization=True)
    else:
        output.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(output)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(output)
    AutoTokenizer.from_pretrained(base_folder).save_pretrained(output)
    return output


def log_policy(tracking_uri: str, run_id: str, policy_folder: Path, max_new_tokens: int) -> tuple[str, str | None]:
    """Log the folder as the run's ``policy`` pyfunc model generating at most ``max_new_tokens``
    (``rollout.max_new_tokens_per_turn``) per prompt; returns its model URI and, where the artifact
    store is a local folder, the folder of the logged weights (``from_pretrained`` works on it)."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=POLICY_ARTIFACT, python_model=PolicyModel(max_new_tokens),
            artifacts={POLICY_ARTIFACT: str(policy_folder)},
        )
    location = mlflow.MlflowClient(tracking_uri=tracking_uri).get_logged_model(info.model_id).artifact_location
    local = str(Path(location.removeprefix("file://")) / "artifacts" / POLICY_ARTIFACT) if location.startswith("file://") else None
    return f"runs:/{run_id}/{POLICY_ARTIFACT}", local


def store_final_policy(weights: dict[str, torch.Tensor], base_folder: Path, run_dir: Path, tracking_uri: str,
                       run_id: str, max_new_tokens: int) -> str:
    """Log ``weights`` as the run's ``policy`` model, keeping no copy in ``run_dir`` but the pointer
    :data:`POLICY_POINTER`; returns the model URI.

    Where the run's artifact store is a local folder, the weights are written once, straight into
    the logged model's folder (the model is logged with its config and tokenizer, then the weights
    file saved beside them); elsewhere the whole folder is written to a scratch folder and uploaded.
    """
    from mlflow import MlflowClient

    run_dir.mkdir(parents=True, exist_ok=True)
    local_store = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.artifact_uri.startswith("file:")
    model = policy_model(weights, base_folder)
    scratch = Path(tempfile.mkdtemp(prefix=".final_policy-", dir=run_dir))
    try:
        folder = save_policy_folder(model, base_folder, scratch / POLICY_ARTIFACT, with_weights=not local_store)
        model_uri, local_path = log_policy(tracking_uri, run_id, folder, max_new_tokens)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if local_store:
        if local_path is None:
            raise RuntimeError(f"the logged policy of run {run_id} has no local folder")
        model.save_pretrained(local_path, safe_serialization=True)
    pointer = {"model_uri": model_uri, "tracking_uri": tracking_uri, "local_path": local_path}
    (run_dir / POLICY_POINTER).write_text(json.dumps(pointer, indent=2) + "\n")
    return model_uri
