"""Vocabulary pruning inside a whole ``compress run`` (tiny BERT): the run re-tokenises its data,
measures the model on new ids, exports the rewritten tokenizer beside the model, resumes from
the stage that pruned the vocabulary, and refuses plans that would feed old ids to a model."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.e2e.runs import assert_fails_cleanly, invoke
from tests.unit.hf_minilm.test_embeddings_stage import EVAL, INPUTS, TRAIN

STAGES = (
    "  - prune: {heads: 0.5, ffn: 0.5, criterion: l2}\n"
    "  - distill: {epochs: 1, lr: 1.0e-4}\n"
    "  - embeddings: {vocab: {corpus: [train], keep_chars: none}}\n"
)


def _write_plan(tmp_path, folder, stages: str = STAGES) -> object:
    (tmp_path / "train.txt").write_text("\n".join(TRAIN))
    (tmp_path / "eval.txt").write_text("\n".join(EVAL))
    path = tmp_path / "plan.yaml"
    path.write_text(
        f"version: 1\nmodel:\n  hf: {folder}\n{INPUTS}"
        "data: {train: train.txt, eval: eval.txt, metric: cosine, also_metrics: [spearman],"
        " batch_size: 4}\n"
        f"stages:\n{stages}"
        "export: {formats: [safetensors, onnx], onnx: {exporter: legacy}}\n"
        "bench: {enabled: false}\n"
    )
    return path


@pytest.mark.slow
def test_run_exports_the_rewritten_tokenizer_and_resumes_after_vocab_pruning(tiny_bert, tmp_path):
    from compressor import load
    from compressor.formats.hf.tokenizer import model_tokenizer

    plan, out = _write_plan(tmp_path, tiny_bert), tmp_path / "out"
    result = invoke("run", plan, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    vocab = report["stages"][2]["vocab"]["tokens"]
    assert vocab["after"] < vocab["before"]
    assert report["artifacts"]["onnx"]["verification"]["passed"]
    # Spearman of pairwise similarities, reported beside the cosine from the same outputs.
    spearman = report["metric"]["also"]["spearman"]
    assert spearman["before"] == pytest.approx(1.0) and -1 <= spearman["after"] < 1
    assert "spearman 1.0000 ->" in (out / "report.md").read_text()
    # The rewritten tokenizer is exported beside the model, and it is the one the model reads.
    tokenizer = out / "tokenizer" / "tokenizer.json"
    assert tokenizer.is_file() and (out / "tokenizer" / "vocab.txt").is_file()
    assert len(json.loads(tokenizer.read_text())["model"]["vocab"]) == vocab["after"]
    back = load(out / "model.safetensors")
    assert back.model.config.vocab_size == vocab["after"]
    ids = model_tokenizer(back, 16)(EVAL)["input_ids"]
    assert int(ids.max()) < vocab["after"]

    # Resuming after the vocabulary stage: the restored model reads new ids, and the run
    # gives it new ids (an old-id example would index past the smaller table).
    metric = report["stages"][2]["metric"]
    shutil.rmtree(out / "tokenizer")
    again = invoke("run", plan, "--out", out, "--quiet", "--resume")
    assert again.exit_code == 0, again.output
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["resumed_stages"] == [0, 1, 2]
    assert resumed["metric"]["after"] == pytest.approx(metric, abs=1e-6)
    assert tokenizer.is_file()


def test_a_plan_that_prunes_the_vocabulary_before_distillation_is_refused(tiny_bert, tmp_path):
    stages = "  - embeddings: {vocab: {}}\n  - distill: {epochs: 1}\n"
    plan = _write_plan(tmp_path, tiny_bert, stages)
    assert_fails_cleanly(
        invoke("validate", plan), 2, "stage 1 (distill) needs the teacher", "embeddings"
    )


def test_the_embeddings_stage_needs_a_hugging_face_model(tmp_path):
    from tests.e2e.runs import mlp_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text(mlp_plan("  - embeddings: {vocab: {}}\n"))
    assert_fails_cleanly(invoke("validate", plan), 2, "needs a Hugging Face text model")
