"""Module-name patterns, as written in a plan: an exact name or ``re:<regex>``.

One meaning everywhere a plan names modules (``prune.ignore``/``modules``/``amounts``,
``share``, ``freeze``, ``aligned.modules``, distillation layers): an exact name, or ``re:``
and a regex that must match a whole name (``re.fullmatch``). Where a pattern selects what to
treat (:func:`matches`), it covers the named module and everything inside it
(``ignore: [encoder]`` protects the whole encoder); where it picks modules to tap
(:func:`resolve_modules`), it gives the named modules themselves.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

import torch.nn as nn

from compressor.errors import StageError

REGEX_PREFIX = "re:"


def check_pattern(pattern: str) -> str:
    """Validate one pattern; raises ValueError with a readable message (for pydantic)."""
    if not pattern:
        raise ValueError("an empty module pattern matches nothing; give a name or 're:<regex>'")
    if pattern.startswith(REGEX_PREFIX):
        try:
            re.compile(pattern[len(REGEX_PREFIX) :])
        except re.error as e:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
    return pattern


def check_amounts(amounts: dict[str, float]) -> dict[str, float]:
    """Validate ``{pattern: fraction removed}`` (``amounts:`` of prune and share)."""
    for pattern, fraction in amounts.items():
        check_pattern(pattern)
        if not 0 <= fraction < 1:
            raise ValueError(f"amounts[{pattern!r}] = {fraction} must be in [0, 1)")
    return amounts


def _ancestry(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``: the name and every module it sits in."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` names ``name`` or a module that contains it."""
    if pattern.startswith(REGEX_PREFIX):
        regex = re.compile(pattern[len(REGEX_PREFIX) :])
        return any(regex.fullmatch(n) for n in _ancestry(name))
    return name == pattern or name.startswith(pattern + ".")


def first_match(patterns: Iterable[str], names: Iterable[str]) -> str | None:
    """The first pattern (in order) that matches any of ``names``; None when none does."""
    names = list(names)
    for pattern in patterns:
        if any(matches(pattern, n) for n in names):
            return pattern
    return None


def resolve_modules(model: nn.Module, pattern: str, what: str) -> list[str]:
    """Module names matching an exact name or a ``re:`` pattern (full match), in model order;
    a clear error naming similar modules when none matches."""
    names = [n for n, _ in model.named_modules() if n]
    if pattern.startswith(REGEX_PREFIX):
        regex = re.compile(pattern[len(REGEX_PREFIX) :])
        found = [n for n in names if regex.fullmatch(n)]
    else:
        found = [pattern] if pattern in names else []
    if not found:
        close = (
            difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            or [n for n in names if pattern.split(".")[-1] in n][:5]
        )
        raise StageError(
            f"{what}: no module named {pattern!r}",
            hint=f"similar names: {', '.join(close)}"
            if close
            else "use a name from `compress inspect` (or a 're:' pattern)",
        )
    return found
