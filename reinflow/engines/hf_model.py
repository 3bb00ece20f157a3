"""The model behind the hf engine: which ones it drives, their end-of-sequence ids, new weights.

``check_supported`` admits Llama-style decoder layers with full attention (``llama``, ``qwen2``,
``qwen3``): the packed decoder drives exactly those. ``eos_ids`` reads the stop tokens from the
generation config, else the model config. ``read_weights_folder`` and ``load_weights_into`` turn a
checkpoint folder (or a state dict) into the model's weights, refusing any that leave a weight
uncovered or name one the model lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3"})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The engine's ``dtype`` names and the torch dtypes they stand for."""


def check_supported(config) -> None:
    """Only Llama-style decoder layers with full attention are driven here."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"the hf engine drives {sorted(SUPPORTED_MODEL_TYPES)} models; '{config.model_type}' is not one of them"
        )
    if config.model_type != "llama" and any(kind != "full_attention" for kind in config.layer_types):
        raise ValueError("the hf engine does not support sliding-window attention layers")


def eos_ids(model) -> list[int]:
    """EOS ids from the generation config (an int or a list), else the model config."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def read_weights_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the ``*.safetensors`` files in a checkpoint folder."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def load_weights_into(model, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's parameters in place; every weight must be covered."""
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing={missing[:5]} unexpected={unexpected[:5]}")
