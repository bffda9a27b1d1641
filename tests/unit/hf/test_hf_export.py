"""The Hugging Face folder writer and reader: what the config can say is said there, the rest
in its ``compress`` field; tokenizer and sentence-transformers files travel along; tied
weights, folders written over, and folders that are not compress's."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from compressor.errors import CheckpointError, ExportError
from compressor.formats.hf.folder import from_pretrained, load_folder
from compressor.formats.hf.model import HFModel
from compressor.formats.hf.save import save_hf_folder
from compressor.graph import StructureGraph
from tests.unit.hf.helpers import SEQ, VOCAB, tiny_model

transformers = pytest.importorskip("transformers")


def text_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}


def out(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def test_per_layer_ffn_widths_live_in_the_compress_field_and_reload_exactly(tmp_path):
    model = HFModel(tiny_model("bert"), "base").eval()
    inputs = text_inputs()
    graph = StructureGraph(model, inputs)
    graph.remove(graph.group("model.encoder.layer.0.intermediate.dense"), range(32))
    graph.remove(graph.group("model.encoder.layer.1.intermediate.dense"), range(16))
    info = save_hf_folder(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["intermediate_size"] == 64  # no one width to write: the config keeps its own
    assert [layer["ffn"] for layer in config["compress"]["layers"]] == [32, 48]
    assert not info["plain_transformers"] and config["compress"]["plain_transformers"] is False
    ops = config["compress"]["manifest"]
    assert {"op": "set_attrs", "module": "encoder.layer.1.intermediate.dense",
            "attrs": {"out_features": 48}} in ops  # fmt: skip
    assert torch.equal(out(load_folder(tmp_path / "hf"), inputs), out(model, inputs))


def test_sentence_transformers_files_and_pooling_travel_with_the_folder(tmp_path):
    source = tmp_path / "source"
    (source / "1_Pooling").mkdir(parents=True)
    (source / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (source / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.'
        'Pooling"}]'
    )
    (source / "tokenizer.json").write_text("{}")
    model = HFModel(tiny_model("distilbert"), "embedding", pooling="cls", normalize=True).eval()
    info = save_hf_folder(model, tmp_path / "hf", source=source)
    assert {"modules.json", "1_Pooling", "tokenizer.json", "model.safetensors"} <= set(
        info["files"]
    )
    assert (tmp_path / "hf" / "1_Pooling" / "config.json").is_file()
    again = load_folder(tmp_path / "hf")
    assert (again.task, again.pooling, again.normalize) == ("embedding", "cls", True)
    inputs = text_inputs()
    assert torch.equal(out(again, inputs), out(model, inputs))
    assert out(again, inputs).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_a_smaller_vocabulary_is_written_to_the_config_and_noted(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "vocab.txt").write_text("[PAD]\n")
    model = tiny_model("bert")
    smaller = nn.Embedding(50, model.config.hidden_size, padding_idx=0)  # as BERT's
    with torch.no_grad():
        smaller.weight.copy_(model.embeddings.word_embeddings.weight[:50])
    model.embeddings.word_embeddings = smaller
    info = save_hf_folder(model, tmp_path / "hf", source=source)
    assert info["config"] == {"vocab_size": 50}
    assert info["plain_transformers"]
    assert any("vocabulary now has 50" in note for note in info["notes"])
    plain = transformers.AutoModel.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 50, (2, SEQ))
    assert torch.equal(
        out(plain, {"input_ids": ids}).last_hidden_state,
        out(model, {"input_ids": ids}).last_hidden_state,
    )
    # With the tokenizer vocabulary pruning rewrote, that one is written instead.
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"t{i}": i for i in range(50)}
    rewritten = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t1"))
    wrapped = HFModel(model, "base")
    wrapped.tokenizer_json = rewritten.to_str()
    info = save_hf_folder(wrapped, tmp_path / "hf2", source=source)
    assert not info["notes"]
    assert (tmp_path / "hf2" / "tokenizer.json").read_text() == rewritten.to_str()
    assert (tmp_path / "hf2" / "vocab.txt").read_text().split() == list(vocab)
    assert load_folder(tmp_path / "hf2")._tokenizer_source == tmp_path / "hf2" / "tokenizer.json"


def test_tied_output_embedding_is_stored_once_and_tied_again(tmp_path):
    torch.manual_seed(0)
    config = tiny_model("gpt2").config
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    info = save_hf_folder(model, tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())["compress"]
    assert saved["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    assert info["plain_transformers"]
    again = from_pretrained(tmp_path / "hf")
    assert again.lm_head.weight is again.transformer.wte.weight
    ids = text_inputs()["input_ids"]
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    want = out(model, {"input_ids": ids}).logits
    assert torch.equal(out(again, {"input_ids": ids}).logits, want)
    assert torch.equal(out(plain, {"input_ids": ids}).logits, want)


def test_an_existing_folder_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "stale.bin").write_text("old")
    save_hf_folder(tiny_model("vit"), folder)
    assert not (folder / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    with pytest.raises(ExportError, match="transformers model"):
        save_hf_folder(nn.Linear(2, 2), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_reader_takes_plain_folders_and_refuses_incomplete_ones(tmp_path):
    model = tiny_model("roberta")
    model.save_pretrained(tmp_path / "plain")
    inputs = text_inputs()
    assert torch.equal(
        out(from_pretrained(tmp_path / "plain"), inputs).last_hidden_state,
        out(model, inputs).last_hidden_state,
    )
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        from_pretrained(tmp_path / "missing")
    (tmp_path / "plain" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        from_pretrained(tmp_path / "plain")


def test_a_folder_compress_wrote_is_a_model_source_and_its_structure_carries_on(tmp_path):
    # Per-layer FFN widths plain transformers cannot load: model.hf rebuilds them from the
    # folder's compress field, and the structure travels on into the next output.
    from compressor import load
    from compressor.formats.compacted import save_compressed
    from compressor.formats.loading import load_model
    from compressor.spec.sections import ModelSpec

    model = HFModel(tiny_model("bert"), "base").eval()
    inputs = text_inputs()
    graph = StructureGraph(model, inputs)
    graph.remove(graph.group("model.encoder.layer.0.intermediate.dense"), range(32))
    save_hf_folder(model, tmp_path / "hf")
    with pytest.raises(Exception, match="size"):  # what plain transformers makes of it
        transformers.AutoModel.from_pretrained(tmp_path / "hf")
    loaded = load_model(ModelSpec(hf=str(tmp_path / "hf"), task="base"))
    assert loaded.manifest and all(op["module"].startswith("model") for op in loaded.manifest)
    assert torch.equal(out(loaded.model, inputs), out(model, inputs))
    save_compressed(
        loaded.model,
        tmp_path / "again.safetensors",
        architecture=loaded.architecture,
        manifest=loaded.manifest,
    )
    assert torch.equal(out(load(tmp_path / "again.safetensors"), inputs), out(model, inputs))
