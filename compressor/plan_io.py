"""Reading a plan: safe YAML with line numbers, ``--set`` overrides, every error at once.

``load_plan`` returns a validated :class:`~compressor.plan.Plan` or raises one
:class:`~compressor.errors.PlanError` listing every problem as
``plan.yaml:LINE:COL: field.path: what is wrong (got X; valid: Y)``.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compressor.errors import PlanError

MAX_PLAN_BYTES = 1024 * 1024  # a plan is a page of YAML; a megabyte is already absurd
MAX_NODES = 100_000  # expanded YAML nodes: stops alias ("billion laughs") bombs
MAX_DEPTH = 64  # nesting levels: a plan needs about six; deeper input only exhausts the stack


@dataclass
class SourceMap:
    """Where each field path of the raw plan was written: ``path -> (line, column)``."""

    file: str
    marks: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    overridden: set[tuple] = field(default_factory=set)

    def where(self, loc: tuple) -> str:
        loc = tuple(loc)
        if loc in self.overridden:
            return "--set"
        while loc:
            if loc in self.marks:
                line, col = self.marks[loc]
                return f"{self.file}:{line}:{col}"
            loc = loc[:-1]
        return self.file


class _Budget:
    def __init__(self, limit: int, file: str):
        self.left = limit
        self.file = file

    def spend(self, node: yaml.Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise PlanError(
                f"{self.file}: the plan expands to more than {MAX_NODES:,} YAML nodes "
                "(an alias bomb?)",
                hint="write the plan out without deeply nested aliases",
            )


# The only tags a plan's collections may carry: plain mappings and lists. Anything else
# (!!python/object..., !!set, a custom !tag) is refused by name instead of silently dropped.
_PLAIN_TAGS = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _tag_problem(node: yaml.Node, smap: SourceMap) -> str | None:
    plain = _PLAIN_TAGS.get(type(node))
    if plain is None or node.tag == plain:
        return None
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    return (
        f"{smap.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: YAML tag "
        f"{tag!r} is not allowed (a plan holds plain data: mappings, lists, scalars)"
    )


def _construct(
    node: yaml.Node,
    path: tuple,
    smap: SourceMap,
    budget: _Budget,
    problems: list[str],
    constructor: yaml.constructor.SafeConstructor,
) -> Any:
    budget.spend(node)
    if len(path) > MAX_DEPTH:
        raise PlanError(
            f"{smap.file}:{node.start_mark.line + 1}: the plan nests deeper than {MAX_DEPTH} "
            "levels (a recursive alias?)",
            hint="a plan is a few levels deep: model, stages, their options",
        )
    smap.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    problem = _tag_problem(node, smap)
    if problem is not None:
        problems.append(problem)
        return None
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # resolves YAML merge keys (<<: *defaults)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, (*path, "<key>"), smap, budget, problems, constructor)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(
                    f"{smap.file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
                    f": mapping keys must be plain scalars"
                )
                continue
            if key in result:
                problems.append(
                    f"{smap.file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
                    f": {_dotted((*path, key))}: key {key!r} appears twice"
                )
            smap.marks[(*path, key)] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            result[key] = _construct(value_node, (*path, key), smap, budget, problems, constructor)
        smap.marks.pop((*path, "<key>"), None)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, i), smap, budget, problems, constructor)
            for i, item in enumerate(node.value)
        ]
    return constructor.construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML safely, recording the line and column of every field path."""
    smap = SourceMap(file)
    if len(text.encode("utf-8", errors="replace")) > MAX_PLAN_BYTES:
        raise PlanError(f"{file}: the plan is larger than 1 MiB", hint="a plan is a short file")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise PlanError(
            f"{file}: the plan nests too deeply to read", hint="a plan is a few levels deep"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise PlanError(
            "the plan is not valid YAML",
            [f"{where}: YAML syntax error: {what}"],
            hint="check indentation, colons and quotes around that line",
        ) from None
    except yaml.YAMLError as e:
        raise PlanError("the plan is not valid YAML", [f"{file}: {e}"]) from None
    if node is None:
        return None, smap
    problems: list[str] = []
    constructor = yaml.constructor.SafeConstructor()
    try:
        data = _construct(node, (), smap, _Budget(MAX_NODES, file), problems, constructor)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise PlanError(
            "the plan uses YAML the loader refuses", [f"{where}: {e.problem}"]
        ) from None
    except RecursionError:
        raise PlanError(f"{file}: the plan nests too deeply") from None
    if problems:
        raise PlanError(f"{len(problems)} problem(s) in {file}", problems)
    return data, smap


def non_finite_problems(data: Any, smap: SourceMap, path: tuple = ()) -> list[str]:
    """``.nan`` / ``.inf`` anywhere in the plan: no field means anything with them, and an
    infinite learning rate or bound only fails much later, mid-run."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{smap.where(path)}: {_dotted(path)}: must be a finite number (got {data})"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite_problems(v, smap, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite_problems(v, smap, (*path, i))]
    return []


# ------------------------------------------------------------------ overrides


def _parse_key(part: str) -> str | int:
    return int(part) if part.lstrip("-").isdigit() else part


def _parse_value(text: str, item: str) -> Any:
    """A ``--set`` value: YAML (a scalar or flow YAML) with the plan's own limits (no tags,
    no alias bombs or self-referencing aliases); text that is not YAML stays a string."""
    if not text.strip():
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise PlanError(f"--set {item!r}: the value nests too deeply") from None
    if node is None:
        return None
    problems: list[str] = []
    where = SourceMap(f"--set {item!r}")
    try:
        value = _construct(
            node,
            (),
            where,
            _Budget(MAX_NODES, where.file),
            problems,
            yaml.constructor.SafeConstructor(),
        )
    except yaml.constructor.ConstructorError as e:
        raise PlanError(f"--set {item!r}: {e.problem}") from None
    except RecursionError:
        raise PlanError(
            f"--set {item!r}: the value nests too deeply (a recursive alias?)"
        ) from None
    if problems:
        raise PlanError(f"--set {item!r}", [p.split(": ", 1)[-1] for p in problems])
    return value


def apply_overrides(data: dict, overrides: list[str], smap: SourceMap) -> dict:
    """Apply ``--set path=value`` overrides; values are parsed as YAML scalars or flow YAML."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected PATH=VALUE, e.g. stages.0.prune.amount=0.3")
            continue
        path_text, value_text = item.split("=", 1)
        try:
            value = _parse_value(value_text, item)
        except PlanError as e:
            problems.extend(e.problems or [e.message])
            continue
        parts = [_parse_key(p) for p in path_text.strip().split(".") if p]
        if not parts:
            problems.append(f"--set {item!r}: empty field path")
            continue
        node: Any = data
        ok = True
        for depth, part in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or not -len(node) <= part < len(node):
                    problems.append(
                        f"--set {item!r}: {_dotted(tuple(parts[: depth + 1]))} is not an index "
                        f"of a list of {len(node)} items"
                    )
                    ok = False
                    break
                node = node[part]
            elif isinstance(node, dict):
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            else:
                problems.append(f"--set {item!r}: {_dotted(tuple(parts[:depth]))} is not a mapping")
                ok = False
                break
        if not ok:
            continue
        last = parts[-1]
        in_list = (
            isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node)
        )
        if in_list or isinstance(node, dict):
            node[last] = value
        else:
            problems.append(f"--set {item!r}: cannot set {last!r} there")
            continue
        smap.overridden.add(tuple(parts))
    if problems:
        raise PlanError("bad --set override(s)", problems)
    return data


# ------------------------------------------------------------------ validation errors


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(plan)"


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


def _short(value: Any) -> str:
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
            problems.append(f"{where}: {_dotted(loc)}: unknown key{hint}{listing}")
        elif kind == "missing":
            problems.append(f"{where}: {_dotted(loc)}: required field is missing")
        elif kind == "invalid_stage":
            from compressor.stages.registry import stage_defs

            given = err.get("input")
            shown = list(given) if isinstance(given, dict) else _short(given)
            guess = (
                difflib.get_close_matches(str(shown[0]), list(stage_defs()), n=1)
                if (isinstance(given, dict) and len(given) == 1)
                else []
            )
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"{where}: {_dotted(loc)}: {err['msg']} (got {shown}){hint}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {_short(given)})"
            problems.append(f"{where}: {_dotted(loc)}: {msg}{shown}")
    return problems


# ------------------------------------------------------------------ entry points


@dataclass
class LoadedPlan:
    plan: Any  # compressor.plan.Plan
    path: Path
    source: SourceMap

    @property
    def base_dir(self) -> Path:
        return self.path.parent


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
    from compressor.plan import Plan

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
            problems += _raw_file_checks(data, smap, path.resolve().parent)
        raise PlanError(f"{len(problems)} problem(s) in {path}", problems) from None
    loaded = LoadedPlan(plan, path.resolve(), smap)
    problems = check_plan(loaded, check_files=check_files, allowed_imports=allowed_imports)
    if problems:
        raise PlanError(f"{len(problems)} problem(s) in {path}", problems)
    return loaded


def _raw_file_checks(data: dict, smap: SourceMap, base: Path) -> list[str]:
    """File checks on the raw plan, so a schema error does not hide a missing file."""
    from compressor.checkpoint import resolve_path
    from compressor.errors import CompressError

    problems = []
    for section in ("model", "teacher"):
        spec = data.get(section)
        if not isinstance(spec, dict):
            continue
        for key in ("checkpoint", "hf"):
            value = spec.get(key)
            if isinstance(value, str):
                loc = (section, key)
                try:
                    path = resolve_path(value, base)
                except CompressError as e:  # package:NAME that is not installed
                    problems.append(f"{smap.where(loc)}: {_dotted(loc)}: {e.message}; {e.hint}")
                    continue
                if not path.exists():
                    problems.append(f"{smap.where(loc)}: {_dotted(loc)}: {path} does not exist")
    return problems


def check_plan(
    loaded: LoadedPlan, *, check_files: bool = True, allowed_imports: list[str] | None = None
) -> list[str]:
    """Checks beyond the schema, done before any weights load: files exist, stages' needs,
    and in safe mode the pickles and imports the run would refuse."""
    from compressor.architecture import is_import_allowed
    from compressor.checkpoint import resolve_path
    from compressor.data import parse_source
    from compressor.errors import CompressError
    from compressor.stages.registry import (
        CALIBRATION_DATA,
        EVAL_DATA,
        EXAMPLE_INPUTS,
        LABELS,
        TEACHER,
        TRAIN_DATA,
    )

    plan, smap, base = loaded.plan, loaded.source, loaded.base_dir
    problems: list[str] = []

    def add(loc: tuple, message: str) -> None:
        problems.append(f"{smap.where(loc)}: {_dotted(loc)}: {message}")

    def check_model(spec: Any, loc: tuple) -> None:
        if spec.checkpoint is not None:
            path = resolve_path(spec.checkpoint, base)
            if check_files and not path.is_file():
                add((*loc, "checkpoint"), f"{path} does not exist")
            bench_only = path.suffix.lower() == ".onnx"
            if bench_only and plan.stages and loc == ("model",):
                add(
                    (*loc, "checkpoint"),
                    "an .onnx file can be benchmarked but not compressed; "
                    "give the PyTorch checkpoint",
                )
        if spec.hf is not None:
            try:
                path = resolve_path(spec.hf, base)
            except CompressError as e:
                add((*loc, "hf"), f"{e.message}; {e.hint}" if e.hint else e.message)
                return
            if check_files and not (path / "config.json").is_file():
                add((*loc, "hf"), f"{path} is not a Hugging Face model folder (no config.json)")

    def check_safe(spec: Any, loc: tuple) -> None:
        if spec.trust_pickle:
            add(
                (*loc, "trust_pickle"),
                "safe mode refuses unpickling (it runs code stored in "
                "the file); give a state dict (.safetensors) instead",
            )
        if spec.architecture:
            module = spec.architecture.partition(":")[0]
            if not is_import_allowed(module, allowed_imports):
                top = module.split(".")[0]
                add(
                    (*loc, "architecture"),
                    f"safe mode refuses importing {module!r} (importing "
                    f"runs its code); allow it with --allow-import {top}",
                )

    check_model(plan.model, ("model",))
    if not isinstance(plan.teacher, str):
        check_model(plan.teacher, ("teacher",))
    if plan.safe:
        check_safe(plan.model, ("model",))
        if not isinstance(plan.teacher, str):
            check_safe(plan.teacher, ("teacher",))

    for key in ("train", "eval", "calibration"):
        source = getattr(plan.data, key)
        if source is None:
            continue
        try:
            ref = parse_source(source, base)
        except CompressError as e:
            add(("data", key), e.message + (f" ({e.hint})" if e.hint else ""))
            continue
        if check_files and ref.kind in ("tensors", "text") and not Path(ref.target).is_file():
            add(("data", key), f"file {ref.target} does not exist")
        module = ref.target.partition(":")[0]
        if ref.kind == "callable" and plan.safe and not is_import_allowed(module, allowed_imports):
            add(
                ("data", key),
                f"safe mode refuses the 'module:function' data source {source!r} "
                f"(it runs code); allow it with --allow-import {module.split('.')[0]}",
            )

    has_inputs = bool(plan.model.inputs) or plan.model.hf is not None
    compressed_input = plan.model.checkpoint is not None and str(plan.model.checkpoint).endswith(
        ".safetensors"
    )
    for index, (name, cfg) in enumerate(plan.stage_list()):
        loc = ("stages", index, name)
        needs = cfg.requirements()
        if EXAMPLE_INPUTS in needs and not has_inputs and not compressed_input:
            add(
                loc,
                f"the {name} stage needs example inputs: give model.inputs "
                "(name: {shape: [...], dtype: ...})",
            )
        if TRAIN_DATA in needs and plan.data.train is None:
            add(loc, f"the {name} stage needs training data: set data.train")
        if LABELS in needs and TRAIN_DATA not in needs and plan.data.train is None:
            add(loc, f"the {name} stage needs labelled training data: set data.train")
        if CALIBRATION_DATA in needs and plan.data.calibration is None and plan.data.train is None:
            add(loc, f"the {name} stage needs calibration data: set data.calibration or data.train")
        if EVAL_DATA in needs and plan.data.eval is None:
            add(loc, f"the {name} stage needs evaluation data: set data.eval")
        if TEACHER in needs and plan.teacher == "none":
            add(loc, f"the {name} stage needs a teacher: set teacher: original or a checkpoint")

    from compressor.stages.embeddings import order_problems

    for message in order_problems(plan.stage_list()):
        add(("stages",), message)
    if plan.model.hf is None and any(name == "embeddings" for name, _ in plan.stage_list()):
        add(("stages",), "the embeddings stage needs a Hugging Face text model: set model.hf")

    gates = plan.gates
    if (
        gates.max_metric_drop is not None or gates.min_metric is not None
    ) and plan.data.eval is None:
        add(("gates",), "metric gates need evaluation data: set data.eval")
    if (
        gates.min_speedup is not None or gates.max_latency_ms is not None
    ) and not plan.bench.enabled:
        add(("gates",), "latency gates need bench.enabled: true")
    if plan.device == "cuda":
        pass  # checked when the run starts (the device may be on another machine than validate)
    return problems
