"""Pydantic models of a compression plan (``plan.yaml``).

Every field has a default where a sensible one exists; unknown keys are errors. The
``stages:`` list is a discriminated union over the stage registry: each entry is a mapping
with exactly one key, the stage name (``- prune: {amount: 0.5}``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    create_model,
    model_validator,
)

import compressor.stages  # noqa: F401  (registers the built-in stages)
from compressor.spec.base import StageConfig, StrictModel
from compressor.spec.sections import (
    BenchSpec,
    DataSpec,
    ExportSpec,
    GatesSpec,
    ModelSpec,
    TeacherSpec,
)
from compressor.stages.registry import stage_defs

PLAN_VERSION = 1


def _null_stage_is_defaults(value: Any) -> Any:
    # `- finetune:` (no mapping) means "finetune with defaults".
    if isinstance(value, dict) and len(value) == 1:
        ((key, cfg),) = value.items()
        if cfg is None:
            return {key: {}}
    return value


def _stage_tag(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in stage_defs() else None
    if isinstance(value, StrictModel):
        return getattr(value, "stage_name", None)
    return None


class _StageEntry(StrictModel):
    """One `stages:` entry; `name` and `config` hide which stage field is set."""

    @property
    def name(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def config(self) -> StageConfig:
        return getattr(self, self.name)


def _build_stage_union() -> Any:
    members = []
    for name, d in stage_defs().items():
        entry = create_model(
            f"{name.title().replace('-', '')}Stage",
            __base__=_StageEntry,
            __doc__=d.summary,
            **{name: (d.config, ...)},
        )
        entry.stage_name = name
        members.append(Annotated[entry, Tag(name)])
    names = ", ".join(stage_defs())
    union = Annotated[
        Union[tuple(members)],
        Discriminator(
            _stage_tag,
            custom_error_type="invalid_stage",
            custom_error_message=f"each stage is a mapping with exactly one key, one of: {names}",
        ),
    ]
    return Annotated[union, BeforeValidator(_null_stage_is_defaults)]


StageEntry = _build_stage_union()


class Plan(StrictModel):
    """A compression plan: model -> stages -> export -> bench -> gates."""

    version: Literal[1] = PLAN_VERSION
    name: str | None = Field(None, description="Run name (default: the plan file's name).")
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    safe: bool = Field(
        False, description="Refuse 'module:function' imports and pickles (CI on untrusted plans)."
    )
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: Literal["original", "none"] | TeacherSpec = "original"
    stages: list[StageEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    export: ExportSpec = Field(default_factory=ExportSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        # `gates:` followed only by comments parses as null: it means "the defaults".
        if isinstance(data, dict):
            for key in ("data", "export", "bench", "gates"):
                if key in data and data[key] is None:
                    data = {**data, key: {}}
            if data.get("stages", []) is None:
                data = {**data, "stages": []}
        return data

    def stage_list(self) -> list[tuple[str, StageConfig]]:
        """The stages as ``(name, config)`` pairs, in order."""
        return [(entry.name, entry.config) for entry in self.stages]
