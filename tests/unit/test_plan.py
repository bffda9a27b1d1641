"""The plan schema and loader: every shipped plan validates; broken plans list every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.errors import PlanError
from compressor.plan.load import load_plan
from compressor.plan.parse import apply_overrides, parse_yaml
from compressor.plan.schema import Plan
from tests.conftest import SAMPLES, cnn_model_block

SHIPPED = sorted(SAMPLES.glob("*/plan*.yaml"))


def test_there_are_shipped_plans():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("plan_path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_plan_validates(plan_path: Path):
    loaded = load_plan(plan_path)
    assert loaded.plan.model.checkpoint or loaded.plan.model.hf
    assert loaded.plan.stages, "a sample plan should compress something"


def problems_of(path: Path, overrides=None) -> list[str]:
    with pytest.raises(PlanError) as info:
        load_plan(path, overrides)
    return info.value.problems


def test_all_schema_errors_are_listed_with_line_and_path(write_plan):
    path = write_plan(
        cnn_model_block() + "  extra_key: 1\n"
        "stages:\n"
        "  - prune: {amount: 1.5, criterion: l3}\n"
        "  - finetune: {epochs: two}\n"
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert f"{path}:6:3: model.extra_key: unknown key" in text
    assert "stages.0.prune.amount: Input should be less than 1 (got 1.5)" in text
    assert "stages.0.prune.criterion:" in text and "'l2'" in text and "(got 'l3')" in text
    assert f"{path}:9:16: stages.1.finetune.epochs" in text


def test_unknown_key_suggests_the_nearest_field(write_plan):
    path = write_plan(cnn_model_block() + "stages:\n  - prune: {amout: 0.5}\n")
    (problem,) = [p for p in problems_of(path) if "amout" in p]
    assert "did you mean 'amount'?" in problem
    assert "valid keys:" in problem and "criterion" in problem


def test_unknown_stage_names_the_valid_ones(write_plan):
    path = write_plan(cnn_model_block() + "stages:\n  - prnue: {amount: 0.5}\n")
    (problem,) = problems_of(path)
    assert "stages.0" in problem and "prune" in problem and "did you mean 'prune'?" in problem


def test_missing_checkpoint_is_reported_with_schema_errors(write_plan, tmp_path):
    path = write_plan(cnn_model_block(tmp_path / "nope.safetensors") + "seed: x\n")
    text = "\n".join(problems_of(path))
    assert "seed" in text
    assert "nope.safetensors does not exist" in text


def test_bad_architecture_string(write_plan):
    path = write_plan(cnn_model_block().replace("sample_models.digits_cnn.model:build", "build"))
    (problem,) = problems_of(path)
    assert "model.architecture" in problem and "package.module:function" in problem


def test_yaml_syntax_error_has_line_and_column(write_plan):
    path = write_plan("model:\n  checkpoint: [a, b\nstages: []\n")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:3:") and "YAML syntax error" in problem


def test_duplicate_keys_are_errors(write_plan):
    path = write_plan(cnn_model_block() + "seed: 1\nseed: 2\n")
    assert any("appears twice" in p for p in problems_of(path))


def test_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        prev = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    with pytest.raises(PlanError, match="alias bomb"):
        parse_yaml(bomb, "bomb.yaml")


def test_stage_needs_are_checked_before_loading(write_plan):
    path = write_plan(cnn_model_block() + "stages:\n  - finetune: {epochs: 1}\n")
    (problem,) = problems_of(path)
    assert "stages.0.finetune" in problem and "needs training data: set data.train" in problem


def test_taylor_needs_training_data_but_l2_does_not(write_plan):
    ok = write_plan(cnn_model_block() + "stages:\n  - prune: {amount: 0.5, criterion: l2}\n")
    assert load_plan(ok).plan.stage_list()[0][0] == "prune"
    bad = write_plan(
        cnn_model_block() + "stages:\n  - prune: {amount: 0.5, criterion: taylor}\n", "b.yaml"
    )
    assert any("needs training data" in p for p in problems_of(bad))


def test_set_overrides_fields_and_are_validated(write_plan):
    path = write_plan(cnn_model_block() + "stages:\n  - prune: {amount: 0.5}\n")
    loaded = load_plan(path, ["stages.0.prune.amount=0.25", "seed=7", "bench.batch_sizes=[4, 8]"])
    assert loaded.plan.stages[0].config.amount == 0.25
    assert loaded.plan.seed == 7 and loaded.plan.bench.batch_sizes == [4, 8]
    problems = problems_of(path, ["stages.0.prune.amount=2"])
    assert problems == ["--set: stages.0.prune.amount: Input should be less than 1 (got 2)"]


def test_set_rejects_a_path_into_a_missing_list_item(write_plan):
    path = write_plan(cnn_model_block() + "stages:\n  - prune: {amount: 0.5}\n")
    with pytest.raises(PlanError) as info:
        load_plan(path, ["stages.3.prune.amount=0.1"])
    assert "not an index of a list of 1 items" in info.value.problems[0]


def test_override_creates_nested_mappings():
    from compressor.plan.parse import SourceMap

    data = {"model": {}}
    apply_overrides(data, ["gates.min_speedup=1.5"], SourceMap("p"))
    assert data["gates"] == {"min_speedup": 1.5}


def test_null_stage_means_defaults(write_plan):
    path = write_plan(cnn_model_block() + "data: {train: builtin:digits}\nstages:\n  - finetune:\n")
    (entry,) = load_plan(path).plan.stages
    assert entry.name == "finetune" and entry.config.epochs == 1.0


def test_json_schema_covers_stages():
    schema = Plan.model_json_schema()
    text = str(schema)
    for name in ("prune", "finetune", "criterion", "max_metric_drop"):
        assert name in text


def test_empty_and_non_mapping_plans(write_plan):
    with pytest.raises(PlanError, match="is empty"):
        load_plan(write_plan(""))
    with pytest.raises(PlanError, match="must be a mapping"):
        load_plan(write_plan("- a\n- b\n", "list.yaml"))


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "missing.yaml")
