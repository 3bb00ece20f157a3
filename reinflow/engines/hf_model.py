"""The model behind the hf engine: which ones it drives, their end-of-sequence ids, new weights.

``check_supported`` admits Llama-style decoder layers with full attention (``llama``, ``qwen2``,
``qwen3``): the packed decoder drives exactly those. ``eos_ids`` reads the stop tokens from the
generation config, else the model config. ``read_weights_folder`` and ``load_weights_into`` turn a
checkpoint folder (or a state dict) into the model's weights, refusing any that leave a weight
uncovered or name one the model lacks. ``point_linear_weights`` lets the packed engine hold its
decoder layers' linear weights only in their packed form (the plain copy, 0.4 GB for the built-in
model, would only be read when re-packing).
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


DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
"""The linear layers of a decoder layer that the packed decoder holds in packed copies."""


def decoder_linear_weights(model) -> dict[str, torch.nn.Parameter]:
    """``{state-dict name: weight}`` of every decoder layer's linear layers."""
    prefix = model.base_model_prefix
    return {f"{prefix}.layers.{index}.{name}.weight": layer.get_submodule(name).weight
            for index, layer in enumerate(model.get_decoder().layers) for name in DECODER_LINEARS}


def point_linear_weights(model, shapes: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor] | None) -> None:
    """Make the decoder layers' linear weights ``state``'s tensors (no copy: views for packing them),
    or, with ``state=None``, empty tensors (their memory freed; the packed copies stay in use).
    ``shapes``: the weights' real shapes; a tensor of another shape is refused."""
    for name, weight in decoder_linear_weights(model).items():
        if state is None:
            weight.data = weight.new_empty(0)
            continue
        if name not in state:
            raise ValueError(f"weights do not fit the model: missing=[{name!r}]")
        tensor = state[name]
        if tensor.shape != shapes[name]:
            raise ValueError(f"weights do not fit the model: {name} has shape {tuple(tensor.shape)}, "
                             f"the model's is {tuple(shapes[name])}")
        weight.data = tensor.detach().to(dtype=weight.dtype, device=weight.device)
