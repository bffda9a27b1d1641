"""Reading a plan: safe YAML with line numbers, ``--set`` overrides, every error at once.

``load_plan`` returns a validated :class:`~compressor.plan.schema.Plan` or raises one
:class:`~compressor.errors.PlanError` listing every problem as
``plan.yaml:LINE:COL: field.path: what is wrong (got X; valid: Y)``."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from compressor.errors import PlanError
from compressor.plan.checks import LoadedPlan, check_plan, raw_file_checks
from compressor.plan.messages import format_validation_error
from compressor.plan.parse import MAX_PLAN_BYTES, apply_overrides, non_finite_problems, parse_yaml
from compressor.plan.schema import Plan


def load_plan(
    path: str | Path,
    overrides: list[str] | None = None,
    *,
    check_files: bool = True,
    allowed_imports: list[str] | None = None,
) -> LoadedPlan:
    """Load, override and validate a plan file.

    Args:
        path: the plan file.
        overrides: ``--set PATH=VALUE`` items.
        check_files: also check that the files the plan names exist.
        allowed_imports: module prefixes safe mode may import (``--allow-import``); used to
            refuse, before any work, imports that the run would refuse.

    Raises:
        PlanError: listing every problem, each with file:line:column and field path.
    """

    path = Path(path)
    if not path.exists():
        raise PlanError(
            f"plan {path} does not exist", hint="check the path (compress init writes one)"
        )
    if path.is_dir():
        raise PlanError(f"plan {path} is a folder", hint="give the plan's .yaml file")
    try:
        raw_bytes = path.read_bytes()
    except PermissionError:
        raise PlanError(f"plan {path}: permission denied") from None
    if len(raw_bytes) > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: the plan is larger than 1 MiB", hint="a plan is a short file")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not UTF-8 text", hint="save the plan as UTF-8 YAML") from None
    data, smap = parse_yaml(text, str(path))
    if data is None:
        raise PlanError(f"{path} is empty", hint="a plan needs at least a model: section")
    if not isinstance(data, dict):
        raise PlanError(
            f"{path}: the plan must be a mapping (key: value), not a {type(data).__name__}"
        )
    if overrides:
        data = apply_overrides(data, overrides, smap)
    not_finite = non_finite_problems(data, smap)
    if not_finite:
        raise PlanError(f"{len(not_finite)} problem(s) in {path}", not_finite)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        problems = format_validation_error(e, smap, Plan, data)
        if check_files:
            problems += raw_file_checks(data, smap, path.resolve().parent)
        raise PlanError(f"{len(problems)} problem(s) in {path}", problems) from None
    loaded = LoadedPlan(plan, path.resolve(), smap)
    problems = check_plan(loaded, check_files=check_files, allowed_imports=allowed_imports)
    if problems:
        raise PlanError(f"{len(problems)} problem(s) in {path}", problems)
    return loaded
