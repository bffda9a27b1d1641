"""Every covered architecture (BERT, RoBERTa, DistilBERT, ViT, GPT-2), loaded from a Hugging
Face folder through a plan: the prune stage removes half its heads and half its FFN width (or
a whole layer), every attribute stays true, the output keeps its shape, the model reloads
exactly from compress's safetensors and from a Hugging Face folder, and its ONNX export
matches torch within 1e-4."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.formats.compacted import load_compressed, save_compressed
from compressor.formats.hf.folder import load_folder
from compressor.formats.hf.load import hf_architecture
from compressor.formats.hf.save import save_hf_folder
from compressor.formats.manifest import diff, snapshot
from compressor.formats.onnx.export import export_onnx
from compressor.graph.depth import sync_configs
from compressor.stages import prune
from compressor.stages.prune.config import PruneConfig
from tests.unit.hf.helpers import (
    FFN,
    HEAD_DIM,
    HIDDEN,
    LAYOUTS,
    expected_facts,
    hf_context,
    layer_facts,
)

transformers = pytest.importorskip("transformers")

ARCHS = ["bert", "roberta", "distilbert", "vit", "gpt2"]


def run_prune(ctx, model, **options):
    ctx.stage_report = {}
    return prune.apply(model, PruneConfig.model_validate(options), ctx)


def hidden_width(model) -> int:
    embeddings = model.model.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Embedding):
        return embeddings.embedding_dim
    return model.model.embeddings.patch_embeddings.projection.out_channels  # ViT


def outputs(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ARCHS)
def test_half_the_heads_and_ffn_reload_and_export(kind, tmp_path):
    ctx, model = hf_context(tmp_path, kind)
    inputs = ctx.example_inputs()
    architecture = ctx.loaded.architecture
    assert architecture.to_dict() == hf_architecture(model).to_dict()
    before, want_shape = snapshot(model), outputs(model, inputs).shape

    run_prune(ctx, model, heads=0.5, ffn=0.5)

    facts = layer_facts(model.model, kind)
    assert facts == [expected_facts(kind, heads=2, ffn=FFN // 2)] * 2
    assert hidden_width(model) == HIDDEN  # the hidden size is never pruned unless asked
    got = outputs(model, inputs)
    assert got.shape == want_shape

    # compress's own file: original architecture + structure manifest, no pickle.
    path = tmp_path / "model.safetensors"
    save_compressed(model, path, architecture=architecture, manifest=diff(before, model))
    back = load_compressed(path).model
    assert layer_facts(back.model, kind) == facts
    assert torch.equal(outputs(back, inputs), got)

    # A Hugging Face folder: per-layer structure in config.json, tokenizer files copied.
    info = save_hf_folder(model, tmp_path / "hf", ctx)
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(
        info["files"]
    )
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["compress"]["layers"] == [{"heads": 2, "head_dim": HEAD_DIM, "ffn": 32}] * 2
    again = load_folder(tmp_path / "hf")
    assert layer_facts(again.model, kind) == facts
    assert torch.equal(outputs(again, inputs), got)
    # Only ViT reads a head size from its config; the others compute hidden / heads, so a
    # plain transformers load must refuse the folder rather than build the wrong model.
    assert info["plain_transformers"] is (kind == "vit")
    if kind == "vit":
        plain = transformers.AutoModel.from_pretrained(tmp_path / "hf")
        assert torch.equal(plain(**inputs).last_hidden_state, got)
    else:
        with pytest.raises(RuntimeError, match=r"mismatched|size mismatch"):
            transformers.AutoModel.from_pretrained(tmp_path / "hf")

    # ONNX: exported, then run in onnxruntime against torch at two batch/sequence sizes.
    onnx = export_onnx(
        model, inputs, tmp_path / "model.onnx", ctx.plan.export.onnx, specs=ctx.input_specs
    )
    assert onnx["verification"]["passed"]
    assert onnx["verification"]["max_abs_diff_overall"] < 1e-4


@pytest.mark.parametrize("kind", ARCHS)
def test_one_layer_of_three_dropped_and_ffn_halved_loads_in_plain_transformers(kind, tmp_path):
    ctx, model = hf_context(tmp_path, kind, layers=3)
    inputs = ctx.example_inputs()
    before = snapshot(model)

    run_prune(ctx, model, layers=1, ffn=0.5)

    report = ctx.stage_report["steps"][0]["blocks"]
    influence = report["influence"]
    (removed,) = report["removed"]
    assert influence[removed] == min(influence.values())  # the least influential block went
    config = model.model.config
    assert config.num_hidden_layers == 2
    assert layer_facts(model.model, kind) == [expected_facts(kind, heads=4, ffn=FFN // 2)] * 2
    for new, layer in enumerate(model.model.get_submodule(LAYOUTS[kind].layers)):
        for module in layer.modules():  # caches and masks index layers by layer_idx
            assert getattr(module, "layer_idx", new) == new
    got = outputs(model, inputs)

    # Uniform widths and a layer count are what a config can say: plain transformers loads it.
    info = save_hf_folder(model, tmp_path / "hf", ctx)
    assert info["plain_transformers"] and info["manifest_ops"] == 0
    ffn_key = {"distilbert": "hidden_dim", "gpt2": "n_inner"}.get(kind, "intermediate_size")
    layers_key = {"distilbert": "n_layers", "gpt2": "n_layer"}.get(kind, "num_hidden_layers")
    assert info["config"] == {ffn_key: FFN // 2, layers_key: 2}  # against the original
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved[ffn_key] == FFN // 2
    plain = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert plain.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.equal(
            plain(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state
        )

    # compress's file records keep_items; the config follows through sync_configs.
    path = tmp_path / "model.safetensors"
    manifest = diff(before, model)
    assert any(op["op"] == "keep_items" for op in manifest)
    save_compressed(model, path, architecture=ctx.loaded.architecture, manifest=manifest)
    back = load_compressed(path).model
    assert torch.equal(outputs(back, inputs), got)
    sync_configs(back, manifest)
    assert back.model.config.num_hidden_layers == 2


def test_hidden_size_is_kept_by_global_pruning_and_pruned_only_when_asked(tmp_path):
    # Torch-Pruning's BERT recipe in global mode also shrank the hidden size (FINDINGS); a
    # classifier's output (logits) does not pin the hidden size, so only the engine can.
    ctx, model = hf_context(tmp_path, "bert", task="classification")
    inputs = ctx.example_inputs()
    shape = outputs(model, inputs).shape
    run_prune(ctx, model, amount=0.5, scope="global")
    assert hidden_width(model) == HIDDEN
    for layer in model.model.bert.encoder.layer:
        assert layer.output.LayerNorm.normalized_shape == (HIDDEN,)
        assert layer.attention.self.query.in_features == HIDDEN
    # The pooler's own width (read only by the classifier) is an ordinary group; its input is
    # the hidden size and stays.
    assert model.model.bert.pooler.dense.in_features == HIDDEN
    blocked = ctx.stage_report["steps"][0]["blocked"]
    assert "hidden size" in blocked["model.bert.embeddings.word_embeddings"]

    run_prune(ctx, model, hidden=0.25)
    assert hidden_width(model) == 24
    bert = model.model.bert
    assert bert.encoder.layer[1].output.LayerNorm.normalized_shape == (24,)
    assert bert.encoder.layer[0].attention.self.query.in_features == 24
    assert bert.encoder.layer[0].attention.self.attention_head_size == HEAD_DIM
    got = outputs(model, inputs)
    assert got.shape == shape
    info = save_hf_folder(model, tmp_path / "hf", ctx)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["hidden_size"] == 24
    assert not info["plain_transformers"]  # BERT's head size would become 24 / 4
    again = load_folder(tmp_path / "hf")
    assert again.task == "classification"
    assert torch.equal(outputs(again, inputs), got)
    onnx = export_onnx(
        model, inputs, tmp_path / "model.onnx", ctx.plan.export.onnx, specs=ctx.input_specs
    )
    assert onnx["verification"]["max_abs_diff_overall"] < 1e-4
