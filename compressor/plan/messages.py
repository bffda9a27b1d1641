"""Turning pydantic's validation errors into messages a user can act on: file, line, field
path, what was given, what would be valid, and close matches for misspelt keys."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from compressor.plan.parse import SourceMap, dotted_path
from compressor.stages.registry import stage_defs


def _clean_loc(loc: tuple, raw: Any) -> tuple:
    """The error location as the user wrote it: union tags pydantic inserts (the stage name
    repeated, a share ``method``) are dropped by walking the raw plan alongside."""
    out: list[Any] = []
    node = raw
    for i, part in enumerate(loc):
        if isinstance(part, str) and part.startswith("function-"):
            continue
        last = i == len(loc) - 1
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif not last and isinstance(node, dict):
            continue  # a tag, not a key the user wrote
        else:
            node = None
        out.append(part)
    return tuple(out)


def _unwrap(annotation: Any) -> list[Any]:
    """The pydantic models an annotation can hold (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        found = []
        for arg in typing.get_args(annotation):
            found.extend(_unwrap(arg))
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _literal_values(annotation: Any) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


def _pick(candidates: list[type[BaseModel]], raw: Any) -> type[BaseModel] | None:
    """Of a union's models, the one the raw mapping selects by a literal tag (e.g. method)."""
    if isinstance(raw, dict):
        for model in candidates:
            for name, field in model.model_fields.items():
                values = _literal_values(field.annotation)
                if len(values) == 1 and raw.get(name) == values[0]:
                    return model
    return candidates[0] if candidates else None


def _model_at(root: type[BaseModel], loc: tuple, raw: Any = None) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc`` (best effort)."""
    current: list[type[BaseModel]] = [root]
    node = raw
    for part in loc:
        if isinstance(node, (dict, list)):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in current:
            if part in model.model_fields:
                nxt.extend(_unwrap(model.model_fields[part].annotation))
        if not nxt:
            return None
        current = nxt
    return _pick(current, node)


def short_text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(
    error: ValidationError, smap: SourceMap, root: type[BaseModel], raw: Any = None
) -> list[str]:
    problems = []
    for err in error.errors():
        loc = _clean_loc(tuple(err["loc"]), raw)
        where = smap.where(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1], raw)
            valid = sorted(parent.model_fields) if parent else []
            guess = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            listing = f"; valid keys: {', '.join(valid)}" if valid else ""
            problems.append(f"{where}: {dotted_path(loc)}: unknown key{hint}{listing}")
        elif kind == "missing":
            problems.append(f"{where}: {dotted_path(loc)}: required field is missing")
        elif kind == "invalid_stage":
            given = err.get("input")
            shown = list(given) if isinstance(given, dict) else short_text(given)
            guess = (
                difflib.get_close_matches(str(shown[0]), list(stage_defs()), n=1)
                if (isinstance(given, dict) and len(given) == 1)
                else []
            )
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"{where}: {dotted_path(loc)}: {err['msg']} (got {shown}){hint}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {short_text(given)})"
            problems.append(f"{where}: {dotted_path(loc)}: {msg}{shown}")
    return problems
