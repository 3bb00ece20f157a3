"""What runs inside vLLM's worker process for the `vllm` engine, and the LoRA adapter files it reads.

vLLM builds its worker class with :class:`WeightReceiver` mixed in (``worker_extension_cls``), so
``AsyncLLM.collective_rpc(name, args)`` calls these methods on every worker. Arguments cross the
process boundary as msgpack, untyped, so tensors travel as safetensors-serialised ``bytes``.
Importing this module never needs vLLM.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from reinflow.engines.base import LoraAdapter

WORKER_EXTENSION = "reinflow.engines.vllm_worker.WeightReceiver"
STAGE_METHOD = "reinflow_stage_weights"
APPLY_METHOD = "reinflow_apply_weights"
_PEFT_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")


class WeightReceiver:
    """Mixed into vLLM's worker: weights arrive in buckets, then load in one in-place reload
    (vLLM's ``reload_weights`` maps checkpoint names onto fused layers and re-runs each layer's
    post-load processing, e.g. the CPU build's packed GEMM weights)."""

    reinflow_staged: dict[str, torch.Tensor] | None = None

    def reinflow_stage_weights(self, packed: bytes) -> int:
        """Keep one bucket of named tensors until :meth:`reinflow_apply_weights`; its tensor count."""
        from safetensors.torch import load

        tensors = load(packed)
        if self.reinflow_staged is None:
            self.reinflow_staged = {}
        self.reinflow_staged.update(tensors)
        return len(tensors)

    def reinflow_apply_weights(self) -> int:
        """Load every staged tensor into the model in place, forget them; how many were loaded."""
        staged, self.reinflow_staged = self.reinflow_staged or {}, None
        self.reload_weights(weights_iterator=iter(list(staged.items())), is_checkpoint_format=True)
        return len(staged)


def adapter_files(adapter: LoraAdapter, base_folder: Path, folder: Path) -> None:
    """Write ``adapter`` as a peft adapter folder (``adapter_config.json`` +
    ``adapter_model.safetensors``, peft's saved names) that vLLM's ``LoRARequest`` loads."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=list(adapter.target_modules),
                        task_type="CAUSAL_LM", base_model_name_or_path=str(base_folder))
    config.save_pretrained(str(folder))
    tensors = {saved_adapter_name(name): tensor.detach().to("cpu", torch.float32).contiguous().clone()
               for name, tensor in adapter.tensors.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def saved_adapter_name(name: str) -> str:
    """peft's trainable parameter name as peft saves it (the adapter's own name dropped).

    >>> saved_adapter_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    """
    saved, count = _PEFT_NAME.subn(r".\1.weight", name)
    if count != 1:
        raise ValueError(f"not a LoRA adapter weight: {name!r} (expected '...lora_A.<adapter>.weight')")
    return saved
