"""Generation engines behind one interface: `hf` (transformers, continuous batching) and `vllm`."""
