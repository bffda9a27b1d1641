"""Low-rank factorisation of a token table: exact at full rank, error falling with rank,
targets, refinement on the embedding output, and a module that saves, reloads and exports."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.rebuildable import FactorizedEmbedding, build_from_config, rebuild_config
from compressor.stages.embeddings import factorize as E


def _table(rows: int = 200, dim: int = 24, seed: int = 0) -> nn.Embedding:
    torch.manual_seed(seed)
    emb = nn.Embedding(rows, dim, padding_idx=0)
    with torch.no_grad():  # a decaying spectrum, like trained tables
        emb.weight.copy_(torch.randn(rows, dim) @ torch.diag(torch.linspace(2, 0.1, dim)))
    return emb


def test_full_rank_is_exact():
    emb = _table()
    result = E.factorize_embedding(emb, 24, refine_steps=0)
    ids = torch.randint(0, 200, (4, 9))
    torch.testing.assert_close(result.module(ids), emb(ids), atol=1e-5, rtol=1e-5)
    assert result.error < 1e-5 and result.energy == pytest.approx(1.0)


def test_error_falls_with_rank_and_weights_favour_frequent_rows():
    emb = _table()
    errors = [E.factorize_embedding(emb, r, refine_steps=0).error for r in (2, 4, 8, 16)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 2
    counts = torch.zeros(200)
    counts[:20] = 100.0  # the corpus only uses rows 0-19
    w = E.row_weights(counts, 200)
    weighted = E.factorize_embedding(emb, 4, weights=w, refine_steps=0).module
    plain = E.factorize_embedding(emb, 4, refine_steps=0).module
    ids = torch.arange(20)
    err = lambda m: (m(ids) - emb(ids)).norm()  # noqa: E731
    assert err(weighted) < err(plain)


def test_refinement_lowers_the_error_of_what_the_model_sees():
    emb = _table(seed=1)
    norm = nn.LayerNorm(24)
    block = nn.Module()
    block.LayerNorm, block.position_embeddings = norm, nn.Embedding(16, 24)
    post = E.bert_post(block)
    result = E.factorize_embedding(emb, 6, post=post, refine_steps=60, lr=1e-2, batch_rows=512)
    assert result.post_error < result.post_error_svd
    assert E.bert_post(nn.Module()) is None


def test_rank_targets():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])
    assert E.choose_rank(1000, 64, s, rank=16) == 16
    assert E.choose_rank(1000, 64, s, keep=0.25, round_to=8) == 8  # 0.25*1000*64/1064 = 15
    assert E.choose_rank(1000, 64, s, energy=0.8, round_to=1) == 2  # (16+4)/22 > 0.8
    with pytest.raises(StageError, match="smaller"):
        E.choose_rank(100, 64, s, rank=60)


def test_module_rebuilds_from_its_config_and_exports_to_onnx(tmp_path):
    module = E.factorize_embedding(_table(), 8, refine_steps=0).module
    key, config = rebuild_config(module, "emb")
    rebuilt = build_from_config(key, config)
    assert isinstance(rebuilt, FactorizedEmbedding) and rebuilt.rank == 8
    rebuilt.load_state_dict(module.state_dict())
    ids = torch.randint(0, 200, (2, 5))
    torch.testing.assert_close(rebuilt(ids), module(ids))
    assert module.weight.shape == (200, 24)

    import onnxruntime as ort

    path = tmp_path / "emb.onnx"
    torch.onnx.export(module, (ids,), str(path), dynamo=False, input_names=["ids"])
    out = ort.InferenceSession(str(path)).run(None, {"ids": ids.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), module(ids).detach(), atol=1e-5, rtol=1e-5)
