"""The final policy as an MLflow model that loads back and generates.

``mlflow.pyfunc.load_model("runs:/<run id>/policy").predict(["What is 2+3?"])`` returns one
greedy completion per prompt (chat template applied), at most ``rollout.max_new_tokens_per_turn``
tokens long: what the policy was trained to answer in. The weights are a plain transformers folder
(LoRA merged), so ``AutoModelForCausalLM.from_pretrained`` on the artifact works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
import torch

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


def save_policy_folder(weights: dict[str, torch.Tensor], base_folder: Path, output: Path) -> Path:
    """Write ``weights`` (full, merged) as a transformers folder beside the base model's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise ValueError(f"policy weights do not fit {base_folder}: missing={missing} unexpected={unexpected}")
    model.save_pretrained(output, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_folder).save_pretrained(output)
    return output


def log_policy(tracking_uri: str, run_id: str, policy_folder: Path, max_new_tokens: int) -> str:
    """Log the folder as the run's ``policy`` pyfunc model generating at most ``max_new_tokens``
    (``rollout.max_new_tokens_per_turn``) per prompt; returns its model URI."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(
            name=POLICY_ARTIFACT, python_model=PolicyModel(max_new_tokens),
            artifacts={POLICY_ARTIFACT: str(policy_folder)},
        )
    return f"runs:/{run_id}/{POLICY_ARTIFACT}"
