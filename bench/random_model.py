"""Write a random-weight model with a public model's architecture, for timing where its weights can't
be downloaded (the GPU machine here reaches no hub).

    python bench/random_model.py qwen2.5-0.5b /tmp/qwen-shaped
    python bench/rollout_engine.py --model /tmp/qwen-shaped --device cuda --dtype bfloat16

Shapes are those of the named model's published ``config.json``; the tokenizer is the built-in
model's (its ids fit in the larger vocabulary). Random weights almost never sample EOS, so every
request runs to its own ``max_new_tokens``: throughput, not text, is what such a model measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from reinflow.config.models import SMOLLM2, resolve_model

ARCHITECTURES = {
    # Qwen/Qwen2.5-0.5B-Instruct's config.json
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
    # Qwen/Qwen2.5-1.5B-Instruct's config.json
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
}


def build(name: str, out: Path, seed: int = 0) -> Path:
    """Save a random model of architecture ``name`` (fp32 safetensors) and the built-in tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    shape = dict(ARCHITECTURES[name])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("architecture", choices=sorted(ARCHITECTURES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.architecture, args.out, args.seed))


if __name__ == "__main__":
    main()
