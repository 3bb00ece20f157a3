"""The random number generators' state (Python, NumPy, torch on the CPU) as checkpoint data.

``rng_state`` captures all three in types ``torch.load(weights_only=True)`` reads back (NumPy's
key array as an int64 tensor, the rest as plain numbers and tuples); ``set_rng_state`` restores
them. ``PolicyTrainer.state`` stores one; the Ray backbone adds one per further rank
(``rank_rng``), so a resumed run draws the same numbers again, dropout masks included.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """Python, numpy and torch (CPU) RNG states, in types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
