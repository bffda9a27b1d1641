"""Decoder LLM pruning through known layouts (compressor.graph.decoder), on tiny random
models of every covered architecture built offline."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.formats.manifest import diff, snapshot
from compressor.graph.decoder import find_decoder_layout, prune_decoder
from compressor.graph.decoder.edits import (
    attention_counts,
    edit_heads,
    edit_mlp,
    sync_decoder_config,
)
from tests.unit.graph.decoder_models import ARCHS, batches, tiny_config, tiny_model

UNITS = {
    "heads": dict(heads=0.5),
    "ffn": dict(ffn=0.5),
    "layers": dict(layers=1),
    "hidden": dict(hidden=0.5),
    "all": dict(heads=0.5, ffn=0.5, layers=1, hidden=0.5),
}
# Configs that derive head_dim = hidden / heads: heads alone or hidden alone is not stock.
DERIVED_HEAD_DIM = {"gpt2", "gpt_neox", "opt"}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _blocks(model):
    layout = find_decoder_layout(model)
    return layout, list(model.get_submodule(layout.layers))


def _attn_params(block, layout) -> tuple[int, int]:
    """(params that scale with the query heads, params that scale with the kv heads)."""
    attn = block.get_submodule(layout.attn)
    o = attn.get_submodule(layout.o)
    q_side = o.weight.numel()
    kv_side = 0
    if layout.qkv_kind == "split":
        q = attn.get_submodule(layout.q)
        q_side += sum(p.numel() for p in q.parameters())
        for path in (layout.k, layout.v):
            kv_side += sum(p.numel() for p in attn.get_submodule(path).parameters())
    else:  # every fused projection here has as many kv heads as query heads, or Phi-3's
        nh, nkv, _ = attention_counts(block, layout)
        fused = sum(p.numel() for p in attn.get_submodule(layout.q).parameters())
        q_side += fused * nh // (nh + 2 * nkv)
        kv_side += fused * 2 * nkv // (nh + 2 * nkv)
    if layout.qk_norm_spans_projection:
        q_side += attn.get_submodule(layout.q_norm).weight.numel()
        kv_side += attn.get_submodule(layout.k_norm).weight.numel()
    return q_side, kv_side


def _mlp_params(block, layout) -> int:
    down = block.get_submodule(layout.mlp_out)
    total = down.weight.numel()
    for path in layout.mlp_in:
        total += sum(p.numel() for p in block.get_submodule(path).parameters())
    return total


def _config_widths(config, layout) -> dict:
    return {
        "heads": getattr(config, layout.heads_key),
        "kv": getattr(config, layout.kv_key) if layout.kv_key else None,
        "ffn": getattr(config, layout.ffn_key),
        "hidden": getattr(config, layout.hidden_key),
        "layers": getattr(config, layout.layers_key),
    }


def _reload(model, tmp_path, stock: bool):
    """A save_pretrained + plain from_pretrained round trip for a stock result, compress's
    Hugging Face folder (structure manifest in config.json) otherwise."""
    import transformers

    if stock:
        model.save_pretrained(tmp_path / "hf")
        return transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "hf", attn_implementation="eager"
        ).eval()
    from compressor.formats.hf.folder import from_pretrained
    from compressor.formats.hf.save import save_hf_folder

    info = save_hf_folder(model, tmp_path / "hf")
    assert info["plain_transformers"] is False
    return from_pretrained(tmp_path / "hf")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_has_a_layout(arch):
    model = tiny_model(arch)
    layout = find_decoder_layout(model)
    assert layout is not None and layout.arch == arch


def _cases():
    # Every unit on every architecture; the fast set keeps each unit on Llama and the
    # combination on every architecture (the whole grid is marked slow beyond that).
    for arch in ARCHS:
        for unit in UNITS:
            fast = arch == "llama" or unit == "all"
            yield pytest.param(arch, unit, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize(("arch", "unit"), list(_cases()))
def test_prune_reload_generate(arch, unit, tmp_path):
    model = tiny_model(arch)
    layout, blocks = _blocks(model)
    before = _params(model)
    widths = _config_widths(model.config, layout)
    q_side, kv_side = _attn_params(blocks[0], layout)
    mlp = _mlp_params(blocks[0], layout)
    block = sum(p.numel() for p in blocks[0].parameters())
    nh, nkv, hd = attention_counts(blocks[0], layout)

    result = prune_decoder(model, calib_batches=batches(), **UNITS[unit])

    after = _params(model)
    layout, blocks = _blocks(model)
    config = _config_widths(model.config, layout)
    counts = {attention_counts(b, layout) for b in blocks}
    if unit == "heads":  # half the kv groups, each with its query heads
        assert counts == {(nh // 2, max(nkv // 2, 1), hd)}
        assert before - after == 4 * (q_side + kv_side) // 2
    if unit == "ffn":
        assert config["ffn"] == widths["ffn"] // 2
        assert before - after == 4 * mlp // 2
    if unit == "layers":
        assert config["layers"] == 3 and len(blocks) == 3
        assert before - after == block
        idx = [getattr(b.get_submodule(layout.attn), "layer_idx", None) for b in blocks]
        assert idx == [0, 1, 2]
    if unit in ("hidden", "all"):
        assert config["hidden"] == widths["hidden"] // 2
        assert model.get_input_embeddings().weight.shape[1] == widths["hidden"] // 2
        assert after < before // 2 if unit == "all" else after < before
    if unit == "all":
        assert config["layers"] == 3 and config["ffn"] == widths["ffn"] // 2
        assert counts == {(nh // 2, max(nkv // 2, 1), hd)}
    tied = model.config.tie_word_embeddings
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied

    stock = result.report["stock_config"]
    assert stock == (arch not in DERIVED_HEAD_DIM or unit not in ("heads", "hidden"))
    if stock:  # a model built from the config alone has exactly these parameters
        import transformers

        fresh = transformers.AutoModelForCausalLM.from_config(model.config)
        assert _params(fresh) == after
        if layout.kv_key:
            assert config["kv"] == attention_counts(blocks[0], layout)[1]
        assert config["heads"] == attention_counts(blocks[0], layout)[0]

    ids = batches(1, seed=5)[0]["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (*ids.shape, 128) and torch.isfinite(logits).all()
    reloaded = _reload(model, tmp_path, stock)
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    torch.testing.assert_close(again, logits, atol=1e-5, rtol=0)

    prompt = ids[:1, :5]
    # min_new_tokens: a random model may emit EOS early; the length check needs all 8.
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    assert cached.shape == (1, 13)
    assert torch.equal(cached, model.generate(prompt, use_cache=False, **kwargs))
    assert torch.equal(reloaded.generate(prompt, use_cache=True, **kwargs), cached)


@pytest.mark.parametrize("arch", ARCHS)
def test_compress_safetensors_round_trip(arch, tmp_path):
    """The structure manifest (snapshot/diff) plus the file's tensors rebuild the pruned
    model from the original architecture, config widths included."""
    from compressor.formats.architecture import ArchitectureRef
    from compressor.formats.compacted import load_compressed, save_compressed

    model = tiny_model(arch)
    before = snapshot(model)
    prune_decoder(model, calib_batches=batches(), heads=0.5, ffn=0.5, layers=1, hidden=0.25)
    path = tmp_path / "model.safetensors"
    save_compressed(
        model, path, architecture=ArchitectureRef("factory"), manifest=diff(before, model)
    )
    loaded = load_compressed(path, builder=lambda _arch: tiny_model(arch, seed=9)).model
    ids = batches(1, seed=5)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    layout = find_decoder_layout(model)
    assert _config_widths(loaded.config, layout) == _config_widths(model.config, layout)
    prompt, kwargs = ids[:1, :5], dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(prompt, **kwargs), model.generate(prompt, **kwargs))


def _zero_heads(block, layout, heads: list[int]) -> None:
    attn = block.get_submodule(layout.attn)
    o = attn.get_submodule(layout.o)
    hd = attention_counts(block, layout)[2]
    with torch.no_grad():
        for h in heads:
            cols = slice(h * hd, (h + 1) * hd)
            if type(o).__name__ == "Conv1D":
                o.weight[cols, :] = 0
            else:
                o.weight[:, cols] = 0


@pytest.mark.parametrize(
    ("arch", "drop_q", "keep_q", "keep_kv"),
    [
        ("llama", [0, 1], [2, 3], [1]),  # a whole KV group (GQA: heads 2, 3 read kv 1)
        ("llama", [0, 2], [1, 3], [0, 1]),  # one query head in each group
        ("phi3", [2, 3], [0, 1], [0]),  # fused [q | k | v]
        ("qwen2", [0, 1], [2, 3], [1]),  # q/k/v biases
        ("gpt_neox", [1, 2], [0, 3], [0, 3]),  # interleaved per-head [q | k | v]
        ("gpt2", [0, 3], [1, 2], [1, 2]),  # Conv1D c_attn
        ("opt", [1], [0, 2, 3], [0, 2, 3]),
    ],
)
def test_removing_silent_heads_keeps_the_logits(arch, drop_q, keep_q, keep_kv):
    """Heads whose output projection is zero contribute nothing: removing exactly them must
    leave the logits unchanged, which fails if any coupled slice picks the wrong rows."""
    model = tiny_model(arch)
    layout, blocks = _blocks(model)
    for block in blocks:
        _zero_heads(block, layout, drop_q)
    ids = batches(1, seed=3)[0]["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
    for block in blocks:
        edit_heads(block, layout, keep_q, keep_kv)
    sync_decoder_config(model)  # Phi-3 reads the head count from the config
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert attention_counts(blocks[1], layout)[:2] == (len(keep_q), len(keep_kv))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2", "gpt_neox"])
def test_removing_silent_mlp_channels_keeps_the_logits(arch):
    model = tiny_model(arch)
    layout, blocks = _blocks(model)
    down = blocks[2].get_submodule(layout.mlp_out)
    drop = list(range(0, 128, 3))
    with torch.no_grad():
        if type(down).__name__ == "Conv1D":
            down.weight[drop, :] = 0
        else:
            down.weight[:, drop] = 0
    ids = batches(1, seed=3)[0]["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
    edit_mlp(blocks[2], layout, [i for i in range(128) if i not in drop])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, want, atol=1e-5, rtol=0)


def test_activation_importance_removes_the_quiet_kv_group():
    """A KV group whose heads write (almost) nothing is the one activation importance drops."""
    model = tiny_model("llama")
    layout, blocks = _blocks(model)
    for block in blocks:
        attn = block.get_submodule(layout.attn)
        with torch.no_grad():
            attn.v_proj.weight[:16] *= 1e-3  # kv head 0 -> query heads 0, 1 read ~0 values
    result = prune_decoder(model, calib_batches=batches(), heads=0.5)
    assert [e["kv"] for e in result.edits if e["unit"] == "heads"] == [[1]] * 4
    assert result.report["calibration_batches"] == 2


def test_depth_removes_the_block_closest_to_identity():
    model = tiny_model("qwen3")
    _, blocks = _blocks(model)
    with torch.no_grad():  # block 2 adds ~nothing to the residual stream
        blocks[2].self_attn.o_proj.weight.mul_(1e-4)
        blocks[2].mlp.down_proj.weight.mul_(1e-4)
    types = list(model.config.layer_types)
    result = prune_decoder(model, calib_batches=batches(), layers=1)
    assert result.report["layers"]["removed"] == [2]
    assert model.config.layer_types == types[:2] + types[3:]


def test_per_layer_widths_differ_and_reload(tmp_path):
    model = tiny_model("llama")
    result = prune_decoder(model, calib_batches=batches(), ffn=0.5, heads=0.5, uniform=False)
    widths = [w["ffn"] for w in result.report["widths"]]
    assert sum(widths) == 4 * 64 and result.report["stock_config"] is False
    reloaded = _reload(model, tmp_path, stock=False)
    ids = batches(1, seed=5)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_magnitude_without_data_and_within_groups():
    model = tiny_model("mistral")
    result = prune_decoder(model, heads=0.5, gqa="within")
    assert "no calibration data" in result.report["notes"][0]
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    attn = model.model.layers[0].self_attn
    assert attn.num_key_value_groups == 1


def test_unsupported_architecture_is_refused_before_any_work():
    import transformers

    config = transformers.BertConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        is_decoder=True,
    )
    model = transformers.BertLMHeadModel(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StageError, match="BertLMHeadModel"):
        prune_decoder(model, heads=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(heads=1.0), "'heads'"),
        (dict(ffn=-0.1), "'ffn'"),
        (dict(layers=4), "cannot remove 4 of 4"),
        (dict(criterion="taylor"), "criterion"),
        (dict(gqa="some"), "gqa"),
    ],
)
def test_bad_amounts_are_typed_errors(kwargs, message):
    model = tiny_model("llama")
    with pytest.raises(StageError, match=message):
        prune_decoder(model, **kwargs)


def test_phi3_per_layer_heads_refused():
    with pytest.raises(StageError, match="same number of heads"):
        prune_decoder(tiny_model("phi3"), heads=0.5, uniform=False)


def test_tiny_config_is_what_the_tests_assume():
    # The amounts above assume 4 layers, 4 query / 2 kv heads (MHA: 4), MLP 128, hidden 64.
    layout = find_decoder_layout(tiny_model("llama"))
    assert _config_widths(tiny_config("llama"), layout) == {
        "heads": 4,
        "kv": 2,
        "ffn": 128,
        "hidden": 64,
        "layers": 4,
    }
