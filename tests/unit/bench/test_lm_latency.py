"""Generation measurement of causal LMs: KV bytes per token against real present tensors,
decode timing that runs exactly the asked steps, interleaved figures for two models."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import DataError
from compressor.formats.onnx.decoder import export_decoder_onnx
from compressor.formats.onnx.session import ort_session
from compressor.measure.lm import (
    GenerationBenchSpec,
    SelfTimed,
    generation_ratios,
    kv_bytes_per_token,
    measure_generation,
    measured_kv_bytes_per_token,
    ort_decode_fn,
    ort_kv_bytes_per_token,
    prompt_ids,
    torch_decode_fn,
)
from tests.unit.export.tiny_lms import tiny_lm


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("llama", 2 * 2 * 2 * 16 * 4),  # GQA: 2 key/value heads of the 4 query heads
        ("qwen3", 2 * 2 * 2 * 24 * 4),  # explicit head_dim 24 (not hidden / heads = 16)
        ("gpt2", 2 * 2 * 4 * 16 * 4),  # one key/value head per query head
    ],
)
def test_kv_bytes_formula_matches_the_present_tensors(arch: str, expected: int) -> None:
    model = tiny_lm(arch)
    assert kv_bytes_per_token(model) == expected
    assert measured_kv_bytes_per_token(model) == expected


def test_kv_bytes_follow_the_dtype_and_the_layer_count() -> None:
    model = tiny_lm("llama", num_hidden_layers=3).to(torch.bfloat16)
    assert kv_bytes_per_token(model) == 2 * 3 * 2 * 16 * 2
    assert measured_kv_bytes_per_token(model) == kv_bytes_per_token(model)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama and a narrower one (hidden 32, 1 key/value head), both exported."""
    folder = tmp_path_factory.mktemp("lm")
    wide = tiny_lm("llama")
    narrow = tiny_lm("llama", hidden_size=32, num_key_value_heads=1, head_dim=16)
    paths = {}
    for name, model in (("original", wide), ("compressed", narrow)):
        paths[name] = export_decoder_onnx(model, folder / f"{name}.onnx", decode_steps=2)["path"]
    return {"original": wide, "compressed": narrow}, paths


def test_decode_runs_the_prompt_once_and_each_new_token_once(two_models) -> None:
    models, paths = two_models
    model = models["original"]
    calls: list[int] = []
    handle = model.model.register_forward_hook(lambda _m, args, _o: calls.append(1))
    try:
        got = torch_decode_fn(model, prompt_ids(128, 1, 6), new_tokens=5)()
    finally:
        handle.remove()
    assert isinstance(got, SelfTimed) and got.ms > 0
    assert len(calls) == 1 + 5
    session = ort_session(paths["original"])
    assert ort_decode_fn(session, prompt_ids(128, 1, 6), 5)().ms > 0
    assert ort_kv_bytes_per_token(session) == kv_bytes_per_token(model)


def test_measure_generation_gives_positive_figures_for_both_runtimes(two_models) -> None:
    models, paths = two_models
    spec = GenerationBenchSpec(
        prefill_shapes=((1, 8), (2, 4)),
        decode_prompt_len=4,
        new_tokens=4,
        rounds=2,
        iterations=1,
        threads=1,
    )
    result = measure_generation(models, spec, onnx_paths=paths)
    assert result["settings"]["interleaved"] and result["settings"]["threads"] == 1
    for name in ("original", "compressed"):
        m = result["models"][name]
        for runtime in ("torch", "onnxruntime"):
            assert set(m["prefill_ms"][runtime]) == {"1x8", "2x4"}
            assert all(
                st["p50"] > 0 and st["rounds"] == 2 for st in m["prefill_ms"][runtime].values()
            )
            dec = m["decode"][runtime]
            assert dec["tokens_per_s"] > 0
            # tokens/s and ms/token describe the same median.
            assert dec["tokens_per_s"] == pytest.approx(1e3 / dec["ms_per_token"], rel=1e-2)
        assert m["kv_cache"]["matches"]
    kv = result["models"]["compressed"]["kv_cache"]
    assert kv["bytes_per_token"] == kv["measured_onnxruntime"] == 2 * 2 * 1 * 16 * 4
    ratios = generation_ratios(result, "original", "compressed")
    assert ratios["kv_bytes_per_token"] == 0.5
    assert set(ratios["prefill_latency"]["onnxruntime"]) == {"1x8", "2x4"}
    assert ratios["decode_tokens_per_s"]["torch"] > 0


def test_onnxruntime_is_skipped_with_a_note_for_a_model_without_a_file(two_models) -> None:
    models, paths = two_models
    spec = GenerationBenchSpec(
        prefill_shapes=((1, 4),),
        decode_prompt_len=2,
        new_tokens=2,
        rounds=1,
        iterations=1,
        threads=1,
    )
    result = measure_generation(models, spec, onnx_paths={"original": paths["original"]})
    assert "onnxruntime" not in result["models"]["compressed"]["decode"]
    assert result["models"]["original"]["decode"]["onnxruntime"]["tokens_per_s"] > 0
    assert any("compressed: no ONNX file" in n for n in result["notes"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("new_tokens", 0), ("rounds", 0), ("prefill_shapes", ((1, 0),)), ("prefill_shapes", ())],
)
def test_bad_sizes_are_refused_naming_the_field(field: str, value) -> None:
    spec = GenerationBenchSpec(**{field: value})
    with pytest.raises(DataError, match="generation bench sizes"):
        measure_generation({"m": tiny_lm("llama")}, spec)


@pytest.mark.slow
def test_lm_generation_benchmark_on_two_saved_llamas(capsys) -> None:
    from benchmarks.lm_generation import main

    argv = ["--demo", "--prefill", "1x8", "--prompt", "4", "--new-tokens", "4"]
    summary = main([*argv, "--rounds", "1", "--iterations", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("RESULT {")
    assert "decode tok/s onnxruntime b1 +4" in out
    ratios = summary["ratios"]
    assert ratios["kv_bytes_per_token"] == 0.5  # 4 -> 2 key/value heads, head_dim kept
    assert ratios["params"] < 0.5
    assert ratios["decode_tokens_per_s"]["onnxruntime"] > 0
    assert all(e["max_abs_diff"] < 1e-4 for e in summary["exports"].values())


def test_timing_sessions_park_their_threads(two_models, monkeypatch) -> None:
    """Interleaved timing needs sessions whose threads stop spinning after a call (a spinning
    session steals the cores of the next model timed)."""
    import compressor.measure.lm as lm

    models, paths = two_models
    made: list = []

    real = lm.timing_session

    def recording_session(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(lm, "timing_session", recording_session)
    spec = GenerationBenchSpec(
        prefill_shapes=((1, 4),), decode_prompt_len=4, new_tokens=2, rounds=1, iterations=1
    )
    result = lm.measure_generation(models, spec, onnx_paths=paths)
    assert result["settings"]["ort_spinning"] is False and len(made) == 2
    for session in made:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
