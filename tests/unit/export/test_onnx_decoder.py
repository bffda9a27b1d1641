"""ONNX export of decoder LMs with past key/values, on tiny random models of every covered
architecture: the graph's names and axes, torch agreement at prefill and over 8 decode steps,
and greedy generation in onnxruntime equal to transformers' ``generate()``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.errors import ExportError
from compressor.formats.onnx.decoder import export_decoder_onnx
from compressor.formats.onnx.decoder_cache import io_names, kv_layout
from compressor.formats.onnx.decoder_verify import ort_generate, session_layout
from compressor.formats.onnx.session import ort_session
from tests.unit.export.tiny_lms import ARCHS, LAYERS, tiny_config, tiny_lm

# Llama is the fast representative; the other architectures take a few seconds each.
ARCH_PARAMS = [a if a == "llama" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """arch -> (model, export result), each architecture exported once per module."""
    cache: dict[str, tuple[torch.nn.Module, dict]] = {}

    def get(arch: str):
        if arch not in cache:
            model = tiny_lm(arch)
            path = tmp_path_factory.mktemp(arch) / "model.onnx"
            cache[arch] = (model, export_decoder_onnx(model, path))
        return cache[arch]

    return get


def _prompt(batch: int = 2, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # the second row is shorter: left padding, as batched generation has it
    ids[1, :2] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_export_matches_torch_at_prefill_and_8_decode_steps(exported, arch: str) -> None:
    model, result = exported(arch)
    v = result["verification"]
    assert v["passed"], v["problem"]
    assert result["exporter"] == "legacy" and result["fallback_reason"] is None
    assert len(v["decode"]) == 8
    assert v["prefill"]["logits"] < 1e-4 and v["prefill"]["present"] < 1e-4
    assert max(max(s["logits"], s["present"]) for s in v["decode"]) < 1e-4
    # The layout stated by the config is what the graph declares.
    session = ort_session(result["path"])
    assert session_layout(session) == kv_layout(model)


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_ort_generate_equals_torch_generate(exported, arch: str) -> None:
    model, result = exported(arch)
    ids, mask = _prompt()
    # 12 new tokens: past Mistral's and Gemma 2's sliding window of 4.
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    got = ort_generate(ort_session(result["path"]), ids, 12, attention_mask=mask)
    assert got.shape == (2, 18)
    np.testing.assert_array_equal(got, ref.numpy())


def test_graph_names_and_dynamic_axes_follow_optimum(exported) -> None:
    _, result = exported("llama")
    session = ort_session(result["path"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    want_in, want_out = io_names(LAYERS)
    assert list(inputs) == want_in == result["inputs"]
    assert list(outputs) == want_out == result["outputs"]
    assert inputs["input_ids"] == ["batch", "sequence_length"]
    assert inputs["attention_mask"] == ["batch", "total_sequence_length"]
    assert inputs["past_key_values.1.value"] == ["batch", 2, "past_sequence_length", 16]
    assert outputs["present.0.key"] == ["batch", 2, "total_sequence_length", 16]
    assert outputs["logits"][:2] == ["batch", "sequence_length"]


def test_one_graph_serves_prefill_and_decode(exported) -> None:
    """Past length 0 (prefill) and > 0 (decode) through the same file; the present grows by
    exactly the new tokens."""
    _, result = exported("llama")
    session = ort_session(result["path"])
    names = [i.name for i in session.get_inputs()]
    empty = np.zeros((3, 2, 0, 16), np.float32)
    ids = np.arange(15, dtype=np.int64).reshape(3, 5)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((3, 5), np.int64),
        "position_ids": np.tile(np.arange(5), (3, 1)),
    }
    feeds.update(dict.fromkeys(names[3:], empty))
    out = session.run(None, feeds)
    assert out[0].shape == (3, 5, 128) and out[1].shape == (3, 2, 5, 16)
    step = {
        "input_ids": ids[:, -1:],
        "attention_mask": np.ones((3, 6), np.int64),
        "position_ids": np.full((3, 1), 5),
    }
    step.update(zip(names[3:], out[1:], strict=True))
    nxt = session.run(None, step)
    assert nxt[0].shape == (3, 1, 128) and nxt[1].shape == (3, 2, 6, 16)
    np.testing.assert_array_equal(nxt[1][:, :, :5], out[1])  # the past is kept, not recomputed


def test_ort_generate_stops_rows_at_eos_like_generate(exported) -> None:
    model, result = exported("llama")
    ids, mask = _prompt()
    with torch.no_grad():
        free = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    eos = int(free[0, 6 + 2])  # row 0's third new token becomes the end of sequence
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
    got = ort_generate(
        ort_session(result["path"]), ids, 6, attention_mask=mask, eos_token_id=eos, pad_token_id=0
    )
    np.testing.assert_array_equal(got, ref.numpy())


def test_mismatch_beyond_tolerance_raises_naming_the_architecture(tmp_path: Path) -> None:
    # float32 graphs differ from torch by ~1e-6; a 1e-12 tolerance must fail, loudly.
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as err:
        export_decoder_onnx(tiny_lm("qwen2"), path, atol=1e-12)
    text = str(err.value)
    assert "Qwen2ForCausalLM" in text and "prefill" in text and "logits" in text
    assert not path.exists()  # nothing unverified is published


def test_stale_kv_head_count_is_refused(tmp_path: Path) -> None:
    model = tiny_lm("llama")
    model.config.num_key_value_heads = 4  # the weights still have 2 key/value heads
    with pytest.raises(ExportError, match=r"LlamaForCausalLM.* 4 key/value heads.*2 x 2 x 16"):
        export_decoder_onnx(model, tmp_path / "model.onnx")


def test_headless_model_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaModel

    with pytest.raises(ExportError, match="no language-model head"):
        export_decoder_onnx(LlamaModel(tiny_config("llama")), tmp_path / "model.onnx")


def test_unknown_exporter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown exporter 'onnx'"):
        export_decoder_onnx(tiny_lm("llama"), tmp_path / "m.onnx", exporter="onnx")


def test_half_precision_model_is_exported_in_float32(tmp_path: Path) -> None:
    model = tiny_lm("llama").to(torch.bfloat16)
    result = export_decoder_onnx(model, tmp_path / "model.onnx", decode_steps=2)
    assert result["verification"]["passed"]
    assert next(model.parameters()).dtype == torch.bfloat16  # the caller's model is untouched
    assert session_layout(ort_session(result["path"])).dtype_bytes == 4


@pytest.mark.slow
def test_dynamo_exporter_also_matches(tmp_path: Path) -> None:
    result = export_decoder_onnx(tiny_lm("llama"), tmp_path / "model.onnx", exporter="dynamo")
    assert result["exporter"] == "dynamo" and result["opset"] == 18
    assert result["verification"]["passed"]
    assert result["verification"]["max_abs_diff"] < 1e-4


def test_external_data_keeps_the_weights_beside_the_graph(tmp_path: Path) -> None:
    model = tiny_lm("llama")
    result = export_decoder_onnx(model, tmp_path / "model.onnx", external_data="always")
    assert result["external_data"] and result["verification"]["passed"]
    data = tmp_path / "model.onnx.data"
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert data.stat().st_size >= 0.9 * weights  # the weights live in the .data file
    assert (tmp_path / "model.onnx").stat().st_size < 0.5 * weights  # graph only, ~100 kB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_auto_tries_dynamo_first_and_falls_back_to_legacy(tmp_path: Path, monkeypatch) -> None:
    # "auto" means what the plain export's auto means: the torch.export graph (leaner, faster
    # to prefill in onnxruntime) when it exports and verifies, else the legacy one.
    from compressor.formats.onnx import decoder as D

    tried: list[str] = []
    real = D._run_exporter

    def recording(kind, *args, **kwargs):
        tried.append(kind)
        if kind == "dynamo":
            raise RuntimeError("dynamo cannot trace this model")
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(D, "_run_exporter", recording)
    result = export_decoder_onnx(tiny_lm("llama"), tmp_path / "m.onnx", exporter="auto")
    assert tried == ["dynamo", "legacy"]
    assert result["exporter"] == "legacy" and result["verification"]["passed"]
    assert result["fallback_reason"] == ("dynamo exporter failed: dynamo cannot trace this model")


def test_generation_bench_exports_the_original_with_the_compressed_graphs_exporter(
    tmp_path: Path, monkeypatch
) -> None:
    # The prefill/decode ratios compare pruning, not exporters: the original's graph is made
    # by the exporter that made the run's decoder_with_past.onnx.
    from compressor.measure import bench as B
    from compressor.spec.sections import BenchSpec

    calls: list[str] = []

    def fake_export(model, path, exporter="legacy", **kwargs):
        calls.append(exporter)
        return {"path": str(path)}

    monkeypatch.setattr(B, "export_decoder_onnx", fake_export)
    monkeypatch.setattr(B, "measure_generation", lambda *a, **k: {"models": {}})
    monkeypatch.setattr(B, "generation_ratios", lambda *a, **k: {})
    monkeypatch.setattr(B, "causal_lm_of", lambda model: model)
    done = {
        "onnx_with_past": {"path": str(tmp_path / "decoder_with_past.onnx"), "exporter": "dynamo"}
    }
    spec = BenchSpec(runtimes=["onnxruntime"])
    B.bench_generation(tiny_lm("llama"), tiny_lm("llama"), spec, done, tmp_path, log=lambda m: None)
    assert calls == ["dynamo"]
    calls.clear()
    B.bench_generation(tiny_lm("llama"), tiny_lm("llama"), spec, {}, tmp_path, log=lambda m: None)
    assert calls == ["legacy", "legacy"]  # nothing exported by the run: both made here
