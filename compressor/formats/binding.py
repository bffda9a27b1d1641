"""Binding a plan's named inputs to a model's ``forward()`` arguments.

Every part of compress calls ``model(**inputs)`` with the plan's input names. Users name
inputs after their data (``x``, ``image``), while ``nn.Sequential.forward`` takes ``input``
and a Hugging Face model ``input_ids``: a plain keyword call then fails deep inside a stage
with a ``TypeError``. :func:`bind_inputs` settles this once, when the model is loaded:

* every plan name is a ``forward()`` argument: nothing to do;
* otherwise, when the plan's inputs can be the leading positional arguments (in order, any
  name that does match sitting at its own position): ``forward`` of this instance is wrapped
  so that the plan's names reach the right arguments, and a note says so once;
* anything else is a :class:`~compressor.errors.PlanError` listing ``forward``'s signature
  (unless ``forward`` takes ``**kwargs``, which may accept the names).

The wrapper is an instance attribute (no change to the class or the state dict) whose
signature names the plan's inputs, so both ONNX exporters and ``copy.deepcopy`` see a normal
bound method.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence

import torch.nn as nn

from compressor.errors import PlanError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(type(model).forward)
    except (TypeError, ValueError):  # builtins / C++ modules: nothing to inspect
        return None


def bind_inputs(
    model: nn.Module, names: Sequence[str], *, what: str = "model.inputs"
) -> str | None:
    """Make ``model(**{name: tensor})`` reach ``forward`` for the plan's input ``names``.

    Returns:
        A note when the inputs were bound by position (None when the names already match).

    Raises:
        PlanError: the names neither match ``forward``'s arguments nor fit them by position.
    """
    names = list(names)
    if not names or getattr(model.forward, "_compress_bound", None) == tuple(names):
        return None
    sig = _signature(model)
    if sig is None:
        return None
    params = list(sig.parameters.values())[1:]  # without self
    kinds = {p.kind for p in params}
    keywords = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    if all(n in keywords for n in names):
        return None
    # forward(..., **kwargs) may take any name, but Hugging Face models take only options
    # there (a plan's 'x' would vanish into them): bind by position when that fits, and trust
    # **kwargs only when it does not.
    var_keyword = inspect.Parameter.VAR_KEYWORD in kinds
    cls = type(model).__name__
    shown = f"{cls}.forward({', '.join(str(p) for p in params)})"
    positional = [p for p in params if p.kind in _POSITIONAL]
    fits = len(names) <= len(positional) or inspect.Parameter.VAR_POSITIONAL in kinds
    order = [p.name for p in positional]
    misplaced = [n for i, n in enumerate(names) if n in order and order.index(n) != i]
    required = [
        p.name for p in positional[len(names) :] if p.default is inspect.Parameter.empty
    ] + [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if not fits or misplaced or required:
        if var_keyword and not misplaced:
            return None
        why = (
            f"inputs {misplaced} are forward() arguments at other positions"
            if misplaced
            else f"forward() also needs {required}"
            if required
            else f"forward() takes {len(positional)} positional argument(s), the plan gives "
            f"{len(names)}"
        )
        raise PlanError(
            f"{what} {names} do not match {shown}: {why}",
            hint=f"name the inputs after forward()'s arguments ({', '.join(order) or 'none'}), "
            "in that order",
        )
    targets = order[: len(names)]
    mapping = dict(zip(names, targets, strict=False))
    forward = type(model).forward

    def bound(self, *args, **kwargs):
        return forward(self, *args, **{mapping.get(k, k): v for k, v in kwargs.items()})

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    bound.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            self_param,
            *(inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names),
        ]
    )
    bound._compress_bound = tuple(names)  # type: ignore[attr-defined]
    model.forward = types.MethodType(bound, model)
    pairs = ", ".join(f"{n} -> {t}" for n, t in mapping.items() if n != t)
    return f"{what} bound to {cls}.forward by position ({pairs})"


def first_argument(model: nn.Module) -> str | None:
    """The name of ``forward``'s first positional argument (None when it has none)."""
    sig = _signature(model)
    if sig is None:
        return None
    params = [p for p in list(sig.parameters.values())[1:] if p.kind in _POSITIONAL]
    return params[0].name if params else None
