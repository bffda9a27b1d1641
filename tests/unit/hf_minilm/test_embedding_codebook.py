"""Weight sharing of the token table (``share: cluster-weights`` on the word embeddings, as the
MiniLM plan ships it) in a whole ``compress run`` on a tiny BERT folder: the whole vocabulary
stays, the table is stored as uint8 codebook indices, the file shrinks by the table's 3/4,
and the reloaded model computes what the run measured."""

from __future__ import annotations

import json

import pytest
import torch

from tests.e2e.runs import invoke
from tests.unit.hf_minilm.test_embeddings_stage import EVAL
from tests.unit.hf_minilm.test_vocab_run import _write_plan

TABLE = "model.embeddings.word_embeddings"


@pytest.mark.parametrize("k, bits", [(256, 8), (16, 4)])
def test_token_table_on_a_codebook_keeps_the_vocabulary_and_shrinks_the_file(
    tiny_bert, tmp_path, k, bits
):
    from compressor import load
    from compressor.formats.hf.model import input_embedding
    from compressor.formats.hf.tokenizer import model_tokenizer

    stages = f"  - share: {{method: cluster-weights, k: {k}, modules: [{TABLE}]}}\n"
    plan, out = _write_plan(tmp_path, tiny_bert, stages), tmp_path / "out"
    result = invoke("run", plan, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    encoded = report["artifacts"]["safetensors"]["codebook_encoded"]
    assert encoded == [f"{TABLE}.weight"]  # the table only: layers keep their float weights

    back = load(out / "model.safetensors")
    table = input_embedding(back).weight
    rows, dim = table.shape
    assert rows == json.loads((tiny_bert / "config.json").read_text())["vocab_size"]
    assert torch.unique(table).numel() <= k
    # In the file the table is uint8 indices (two 4-bit indices a byte for k <= 16) plus at
    # most k float32 centroids: (32 - bits) / 32 of its float32 bytes saved.
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        indices = f.get_tensor(f"{TABLE}.weight.__indices")
        codebook = f.get_tensor(f"{TABLE}.weight.__codebook")
    assert indices.dtype == torch.uint8 and codebook.numel() <= k
    assert indices.numel() == (rows * dim * bits + 7) // 8
    # The reloaded model computes the metric the run reported on the eval text.
    # No tokenizer is rewritten (the vocabulary is unchanged): the original folder's reads it.
    from tokenizers import Tokenizer

    from compressor.formats.hf.tokenizer import tokenizer_callable

    assert model_tokenizer(back, 16) is None
    tok = tokenizer_callable(Tokenizer.from_file(str(tiny_bert / "tokenizer.json")), 16)
    with torch.no_grad():
        assert torch.isfinite(back(**tok(EVAL))).all()
    assert 0.5 < report["metric"]["after"] <= 1.0
