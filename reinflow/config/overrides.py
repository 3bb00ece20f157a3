"""Dotted command-line overrides: ``train.lr=1e-6 model.path=builtin:tiny-random-llama``."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from reinflow.config.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value.

    >>> parse_override("train.lr=1e-6")
    (['train', 'lr'], 1e-06)
    >>> parse_override("judge.options={weight: 0.5}")
    (['judge', 'options'], {'weight': 0.5})
    """
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override '{text}': expected dotted.key=value, e.g. train.lr=1e-6")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, float) or (isinstance(parsed, str) and _looks_numeric(parsed)):
        parsed = float(parsed)
    return parts, parsed


def _looks_numeric(value: str) -> bool:
    if not any(ch.isdigit() for ch in value):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """Return a copy of ``raw`` with each override set; intermediate sections are created."""
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"{source}: override '{text}': '{where}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result
