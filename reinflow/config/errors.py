"""Readable config errors: file, key path, what is wrong and the nearest valid key."""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ValidationError

from reinflow.errors import ReinflowError


class ConfigError(ReinflowError):
    """A config problem, with a message meant for the user as it stands (no traceback needed)."""


def format_validation_error(error: ValidationError, root: type[BaseModel], source: str) -> str:
    """One line per problem: ``<source>: <key.path>: <what is wrong>[ (did you mean '<key>'?)]``.

    The bad value is quoted (``(got ...)``) unless its field is declared ``Field(repr=False)``: such a
    field may hold a pasted secret, so no message shows it.
    """
    lines = [_format_one(item, root, source) for item in error.errors()]
    return "\n".join(lines)


def _format_one(item: dict, root: type[BaseModel], source: str) -> str:
    loc = tuple(item["loc"])
    model, path = _walk(root, loc[:-1]) if loc else (root, [])
    key = str(loc[-1]) if loc else ""
    key_path = ".".join(path + [key]) if key else "(top level)"
    if item["type"] == "extra_forbidden":
        hint = _nearest(key, model)
        return f"{source}: {key_path}: unknown key{hint}"
    if item["type"] == "missing":
        return f"{source}: {key_path}: required key is missing"
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] in ("literal_error", "union_tag_invalid"):
        return f"{source}: {key_path}: {message}"
    got = item.get("input")
    quotable = not isinstance(got, (dict, list)) and got is not None and _shown(model, key)
    got_text = f" (got {got!r})" if quotable else ""
    return f"{source}: {key_path}: {message}{got_text}"


def _shown(model: type[BaseModel] | None, key: str) -> bool:
    """Whether ``key``'s value may be quoted: not for a field declared ``repr=False``."""
    field = model.model_fields.get(key) if model is not None else None
    return field is None or field.repr


def _nearest(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    fields = list(model.model_fields)
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(fields)})"


def _walk(model: type[BaseModel] | None, loc: tuple) -> tuple[type[BaseModel] | None, list[str]]:
    """Follow a pydantic error location through nested models; tagged-union tags are dropped."""
    path: list[str] = []
    for part in loc:
        if model is None:
            path.append(str(part))
            continue
        field = model.model_fields.get(str(part))
        if field is not None:
            path.append(str(part))
            model = _single_model(field.annotation)
            continue
        # a tag of a discriminated union (e.g. 'local' in data.source.local.files): pick that member
        tagged = _union_member(model, part) if model is not None else None
        if tagged is not None:
            model = tagged
        else:
            path.append(str(part))
            model = None
    return model, path


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _single_model(annotation: object) -> type[BaseModel] | None:
    models = _models_in(annotation)
    if len(models) == 1:
        return models[0]
    if models:
        return _TaggedUnion.of(models)
    return None


class _TaggedUnion(BaseModel):
    """Placeholder standing for a discriminated union while walking an error location."""

    members: typing.ClassVar[dict[str, type[BaseModel]]] = {}

    @classmethod
    def of(cls, models: list[type[BaseModel]]) -> type[BaseModel]:
        members = {m.model_fields["type"].default: m for m in models if "type" in m.model_fields}
        return type("TaggedUnion", (cls,), {"members": members})


def _union_member(model: type[BaseModel], tag: object) -> type[BaseModel] | None:
    if isinstance(model, type) and issubclass(model, _TaggedUnion):
        return model.members.get(str(tag))
    return None
