"""What a Prefect flow or task may take as a parameter: plain values that Prefect can serialise,
hash or copy whatever its release does with them (JSON leaves, lists and dicts of them, pydantic
models, dataclasses of plain fields), never a live object (a session, engine, policy or judge).

Shared by ``tests/test_flow_parameters.py`` (the signatures) and ``helpers.parameter_probe`` (the
values a real run passes).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel

LEAVES = (str, int, float, bool, type(None))
CONTAINERS = (list, tuple, dict, set, frozenset, collections.abc.Sequence, collections.abc.Mapping)


def plain_type(annotation: Any, top: bool = True) -> bool:
    """Whether a parameter annotated ``annotation`` holds only plain values (``Any`` only inside a
    container: a config dict's JSON values)."""
    origin = get_origin(annotation)
    if annotation is Any:
        return not top
    if annotation in LEAVES:
        return True
    if origin in (Union, types.UnionType):
        return all(plain_type(arg, top) for arg in get_args(annotation))
    if origin is Literal:
        return True
    if origin in CONTAINERS:
        return all(plain_type(arg, False) for arg in get_args(annotation) if arg is not Ellipsis)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return all(plain_type(hint, False) for hint in get_type_hints(annotation).values())
    return False


def to_json(value: Any) -> Any:
    """``value`` as JSON data; ``TypeError`` naming the first part that is not a plain value."""
    if isinstance(value, LEAVES):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"a dict with non-string keys: {list(value)[:3]}")
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, BaseModel):
        return json.loads(value.model_dump_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    raise TypeError(f"not a plain value: {type(value).__module__}.{type(value).__qualname__}")


def plain_value(value: Any) -> bool:
    """Whether ``value`` is a plain value (it round-trips through JSON)."""
    try:
        json.dumps(to_json(value))
    except (TypeError, ValueError):
        return False
    return True


def resolved_hints(function: typing.Callable[..., Any]) -> dict[str, Any]:
    """The parameters' annotations of ``function`` (string annotations resolved), return left out."""
    hints = get_type_hints(function)
    hints.pop("return", None)
    return hints
