"""Token ids to text with the run's own tokenizer (``model.path`` of its config), loaded once per
model and shared by all requests; each id's text is decoded once and remembered.

The model folder's ``tokenizer.json`` is read with the ``tokenizers`` library (a fraction of a
second); only a folder without one goes through ``transformers.AutoTokenizer`` (seconds to import).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from reinflow.errors import ReinflowError
from reinflow.config.models import resolve_model

log = logging.getLogger(__name__)


class TokenTexts:
    """``texts(model_path, ids)`` → the text of each id, or None with the reason it is unavailable."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}
        self._problems: dict[str, str] = {}
        self._texts: dict[str, dict[int, str]] = {}
        self._lock = threading.Lock()

    def texts(self, model_path: str | None, ids: list[int]) -> list[str] | None:
        """Each id's text (special tokens included, as the model saw them)."""
        if model_path is None or self.problem(model_path) is not None:
            return None
        with self._lock:
            known = self._texts.setdefault(model_path, {})
            missing = sorted({token for token in ids if token not in known})
            if missing:
                decoded = _decode_each(self._tokenizers[model_path], missing)
                known.update(zip(missing, decoded, strict=True))
            return [known[token] for token in ids]

    def problem(self, model_path: str) -> str | None:
        """Why the tokenizer of ``model_path`` cannot be loaded (None once it is loaded)."""
        with self._lock:
            if model_path not in self._tokenizers and model_path not in self._problems:
                self._load(model_path)
            return self._problems.get(model_path)

    def _load(self, model_path: str) -> None:
        try:
            self._tokenizers[model_path] = _load_tokenizer(resolve_model(model_path))
        except (ReinflowError, OSError, ValueError) as error:
            self._problems[model_path] = f"tokenizer of '{model_path}' unavailable ({error}); showing token ids only"
            log.warning("logview: %s", self._problems[model_path])


def _load_tokenizer(folder: Path) -> Any:
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _decode_each(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each id decoded on its own (a byte-level piece of a longer character shows as U+FFFD)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.decode_batch([[token] for token in ids], skip_special_tokens=False)
    return tokenizer.batch_decode([[token] for token in ids], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
