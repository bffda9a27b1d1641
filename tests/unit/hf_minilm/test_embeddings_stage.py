"""The ``embeddings`` stage through a whole run on a tiny BERT: vocabulary pruning and
factorisation reported separately, re-tokenised evaluation, a verified ONNX export and a
model.safetensors that reloads with its own tokenizer."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import PlanError
from compressor.plan.load import load_plan
from compressor.plan.schema import Plan
from compressor.stages.embeddings.config import EmbeddingsConfig, order_problems
from tests.unit.sharing.helpers import make_ctx

TRAIN = ["the value of a list is a new object", "a function returns the name of a class"] * 4
EVAL = ["the list returns a new value", "a class is an object", "reading the strings"]
INPUTS = (
    "  inputs:\n"
    "    input_ids: {shape: [1, 16], dtype: int64, low: 0, high: 60}\n"
    "    attention_mask: {shape: [1, 16], dtype: int64, low: 1, high: 2}\n"
)


def _plan(tmp_path, folder, stages: str) -> str:
    (tmp_path / "train.txt").write_text("\n".join(TRAIN))
    (tmp_path / "eval.txt").write_text("\n".join(EVAL))
    text = (
        f"version: 1\nmodel:\n  hf: {folder}\n{INPUTS}"
        "data: {train: train.txt, eval: eval.txt, metric: cosine, batch_size: 4}\n"
        f"stages:\n{stages}"
        "export: {formats: [safetensors, onnx], onnx: {exporter: legacy}}\n"
        "bench: {enabled: false}\n"
    )
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_stage_prunes_vocab_factorises_exports_and_reloads(tiny_bert, tmp_path):
    from compressor import load
    from compressor.formats.export import export_model
    from compressor.formats.hf.tokenizer import model_tokenizer
    from compressor.formats.manifest import diff, snapshot
    from compressor.rebuildable import FactorizedEmbedding
    from compressor.stages.registry import get_stage

    stages = (
        "  - embeddings:\n"
        "      vocab: {corpus: [train], keep_chars: none}\n"
        "      factorize: {rank: 4, round_to: 1, refine_steps: 10}\n"
    )
    ctx, model = make_ctx(_plan(tmp_path, tiny_bert, stages))
    before_metric = ctx.evaluate(model)  # caches the teacher's outputs on the original ids
    ((name, cfg),) = ctx.plan.stage_list()
    before = snapshot(model)
    model = get_stage(name).apply(model, cfg, ctx)
    vocab, factor = ctx.stage_report["vocab"], ctx.stage_report["factorize"]
    assert vocab["tokens"]["after"] < vocab["tokens"]["before"]
    assert vocab["table_bytes"]["after"] < vocab["table_bytes"]["before"]
    assert vocab["eval_tokens_not_kept"]["examples_affected"] > 0  # "an", "reading strings"
    assert factor["rank"] == 4 and factor["table_bytes"]["after"] < vocab["table_bytes"]["after"]
    assert before_metric == pytest.approx(1.0) and 0 < factor["metric"] <= vocab["metric"] < 1
    # The run now tokenises with the new tokenizer and says the new vocabulary size.
    assert ctx.loaded.input_specs["input_ids"].high == vocab["tokens"]["after"]
    assert int(ctx.example_inputs()["input_ids"].max()) < vocab["tokens"]["after"]

    out = tmp_path / "out"
    artifacts = export_model(model.eval(), ctx, out, diff(before, model))
    assert artifacts["onnx"]["verification"]["passed"]
    back = load(out / "model.safetensors")
    table = back.model.get_input_embeddings()
    assert isinstance(table, FactorizedEmbedding)
    assert table.num_embeddings == vocab["tokens"]["after"] == back.model.config.vocab_size
    x = model_tokenizer(back, 16)(EVAL)
    x = {k: x[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = model(**x)
        torch.testing.assert_close(back(**x), expected)
    got = load(out / "model.onnx")(**x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_vocab_pruning_must_come_after_stages_that_need_the_teacher(tiny_bert, tmp_path):
    bad = "  - embeddings: {vocab: {}}\n  - distill: {epochs: 1}\n"
    plan = Plan.model_validate(
        {
            "model": {"hf": str(tiny_bert)},
            "stages": [{"embeddings": {"vocab": {}}}, {"distill": {"epochs": 1}}],
        }
    )
    (problem,) = order_problems(plan.stage_list())
    assert "stage 1 (distill) needs the teacher" in problem
    with pytest.raises(PlanError, match="move the vocabulary pruning after it"):
        load_plan(_plan(tmp_path, tiny_bert, bad))  # checked before any weights load
    good = "  - distill: {epochs: 1}\n  - embeddings: {vocab: {}}\n"
    assert order_problems(load_plan(_plan(tmp_path, tiny_bert, good)).plan.stage_list()) == []


def test_config_is_checked_before_any_work():
    with pytest.raises(ValueError, match="vocab"):
        EmbeddingsConfig()
    with pytest.raises(ValueError, match="exactly one"):
        EmbeddingsConfig(factorize={"rank": 8, "keep": 0.2})
    with pytest.raises(ValueError, match="split"):
        EmbeddingsConfig(vocab={"corpus": ["nonsense"]})
    cfg = EmbeddingsConfig(vocab={"corpus": ["train", "builtin:docstrings"]})
    assert "train_data" in cfg.requirements()
    plan = {"model": {"hf": "x"}, "stages": [{"embeddings": {"factorize": {"energy": 2}}}]}
    with pytest.raises(Exception, match="less than or equal to 1"):
        Plan.model_validate(plan)
