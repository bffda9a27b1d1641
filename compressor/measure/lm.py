"""Generation speed of causal LMs: prefill latency, decode tokens/s with the KV cache, and
KV-cache bytes per token, in torch and onnxruntime, models measured interleaved.

* Prefill: one forward over (batch x prompt length) tokens from an empty cache, producing the
  cache (what a server does before the first new token).
* Decode: after a prompt, ``new_tokens`` single-token steps, each fed the previous step's
  cache; the prompt's prefill runs inside the timed callable but outside its clock, so the
  figure is decode alone. Greedy, no end-of-sequence stop: every model makes the same number
  of steps. torch runs the same loop as onnxruntime (forward + ``DynamicCache``), not
  ``generate()``, whose logits processors and stopping checks would be timed too.
* Interleaved: :func:`compressor.measure.latency.time_interleaved` alternates the models within each
  round (rotating who starts) and reports medians, so machine noise hits every model alike.
* KV bytes per token: ``2 * layers * kv_heads * head_dim * dtype bytes`` from the config,
  checked against the present tensors a real forward returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import DataError
from compressor.formats.onnx.decoder_cache import (
    cache_kwarg,
    flatten_cache,
    kv_layout,
    returned_cache,
    vocab_size_of,
)
from compressor.formats.onnx.decoder_verify import session_layout
from compressor.formats.onnx.session import timing_session
from compressor.measure.latency import DeviceTime, environment, physical_cores, time_interleaved

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class SelfTimed(DeviceTime):
    """Milliseconds the callable clocked itself (the decode loop, not its prompt's prefill);
    :func:`time_interleaved` takes a returned ``DeviceTime`` instead of its host clock."""


@dataclass
class GenerationBenchSpec:
    """What to measure. Defaults: prefill at batch 1 x 128 tokens, decode of 32 tokens at
    batch 1 after a 32-token prompt, 5 interleaved rounds."""

    prefill_shapes: tuple[tuple[int, int], ...] = ((1, 128),)
    decode_batch: int = 1
    decode_prompt_len: int = 32
    new_tokens: int = 32
    warmup: int = 1
    rounds: int = 5
    iterations: int = 3
    threads: int | None = None
    budget_s: float | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raises DataError naming the field when a size is not positive."""
        sizes = {"decode_batch": self.decode_batch, "decode_prompt_len": self.decode_prompt_len}
        sizes.update(new_tokens=self.new_tokens, rounds=self.rounds, iterations=self.iterations)
        for i, (b, s) in enumerate(self.prefill_shapes):
            sizes[f"prefill_shapes[{i}]"] = min(b, s)
        bad = [f"{k}={v}" for k, v in sizes.items() if int(v) < 1]
        if bad or not self.prefill_shapes:
            raise DataError(
                f"generation bench sizes must be positive: {', '.join(bad) or 'no prefill shape'}",
                hint="give prefill shapes as (batch, prompt_len) pairs and sizes >= 1",
            )


def prompt_ids(vocab: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random token ids (batch, length): speed does not depend on which tokens they are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


# ------------------------------------------------------------------ torch


def _forward(model: nn.Module, ids, mask, pos, cache):
    return model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=True,
        return_dict=True,
        **{cache_kwarg(model): cache},
    )


def torch_prefill_fn(model: nn.Module, ids: torch.Tensor) -> Callable[[], Any]:
    """One prefill of ``ids`` from an empty cache, in inference mode."""
    from transformers import DynamicCache  # deferred: extra 'hf'

    model.eval()
    mask = torch.ones_like(ids)
    pos = torch.arange(ids.shape[1]).expand_as(ids)

    def run() -> Any:
        with torch.inference_mode():
            return _forward(model, ids, mask, pos, DynamicCache()).logits

    return run


def torch_decode_fn(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> Callable[[], Any]:
    """Prefill ``ids`` (untimed), then ``new_tokens`` greedy single-token steps (timed)."""
    from transformers import DynamicCache  # deferred: extra 'hf'

    model.eval()
    batch, prompt = ids.shape

    def run() -> SelfTimed:
        with torch.inference_mode():
            mask = torch.ones(batch, prompt + new_tokens, dtype=torch.long)
            pos = torch.arange(prompt).expand(batch, prompt)
            out = _forward(model, ids, mask[:, :prompt], pos, DynamicCache())
            t0 = time.perf_counter_ns()
            for i in range(new_tokens):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                n = prompt + i
                step_pos = torch.full((batch, 1), n, dtype=torch.long)
                out = _forward(model, nxt, mask[:, : n + 1], step_pos, returned_cache(out))
            return SelfTimed((time.perf_counter_ns() - t0) / 1e6)

    return run


# ------------------------------------------------------------------ onnxruntime


def _ort_feeds(session: Any, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]):
    seq = ids.shape[1]
    total = mask.shape[1]
    pos = np.broadcast_to(np.arange(total - seq, total, dtype=np.int64), ids.shape)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": np.ascontiguousarray(pos)}
    feeds.update(zip(_past_names(session), past, strict=True))
    return feeds


def _past_names(session: Any) -> list[str]:
    return [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]


def _empty_past(session: Any, batch: int) -> list[np.ndarray]:
    layout = session_layout(session)
    dtype = {2: np.float16, 4: np.float32, 8: np.float64}[layout.dtype_bytes]
    shape = (batch, layout.num_kv_heads, 0, layout.head_dim)
    return [np.zeros(shape, dtype) for _ in range(2 * layout.num_layers)]


def ort_prefill_fn(session: Any, ids: torch.Tensor) -> Callable[[], Any]:
    """One prefill of ``ids`` from an empty past in an exported decoder session."""
    np_ids = ids.numpy().astype(np.int64)
    feeds = _ort_feeds(session, np_ids, np.ones_like(np_ids), _empty_past(session, len(np_ids)))
    return lambda: session.run(None, feeds)


def ort_decode_fn(session: Any, ids: torch.Tensor, new_tokens: int) -> Callable[[], Any]:
    """Prefill ``ids`` (untimed), then ``new_tokens`` greedy single-token steps (timed)."""
    np_ids = ids.numpy().astype(np.int64)
    batch, prompt = np_ids.shape
    empty = _empty_past(session, batch)

    def run() -> SelfTimed:
        mask = np.ones((batch, prompt + new_tokens), np.int64)
        got = session.run(None, _ort_feeds(session, np_ids, mask[:, :prompt], empty))
        t0 = time.perf_counter_ns()
        for i in range(new_tokens):
            nxt = got[0][:, -1].argmax(-1).astype(np.int64)[:, None]
            got = session.run(None, _ort_feeds(session, nxt, mask[:, : prompt + i + 1], got[1:]))
        return SelfTimed((time.perf_counter_ns() - t0) / 1e6)

    return run


# ------------------------------------------------------------------ KV cache bytes


def kv_bytes_per_token(model: nn.Module) -> int:
    """KV-cache bytes per token per sequence stated by the config (see ``KVLayout``)."""
    return kv_layout(model).bytes_per_token()


def measured_kv_bytes_per_token(model: nn.Module, prompt_len: int = 8) -> int:
    """KV-cache bytes per token per sequence of the present tensors a real forward returns
    (the cache after a ``prompt_len`` prefill of one sequence, over ``prompt_len``)."""
    from transformers import DynamicCache  # deferred: extra 'hf'

    ids = prompt_ids(vocab_size_of(model), 1, prompt_len)
    with torch.inference_mode():
        out = _forward(
            model.eval(),
            ids,
            torch.ones_like(ids),
            torch.arange(prompt_len)[None],
            DynamicCache(),
        )
    total = sum(t.numel() * t.element_size() for t in flatten_cache(returned_cache(out)))
    return total // prompt_len


def ort_kv_bytes_per_token(session: Any, prompt_len: int = 8) -> int:
    """The same figure from an exported decoder's ``present.*`` outputs."""
    ids = np.zeros((1, prompt_len), np.int64)
    got = session.run(None, _ort_feeds(session, ids, np.ones_like(ids), _empty_past(session, 1)))
    return sum(a.nbytes for a in got[1:]) // prompt_len


def kv_cache_report(model: nn.Module, session: Any | None = None) -> dict[str, Any]:
    """Config formula vs measured present tensors (torch, and onnxruntime when given)."""
    layout = kv_layout(model)
    report: dict[str, Any] = {
        "bytes_per_token": layout.bytes_per_token(),
        "layout": asdict(layout),
        "measured_torch": measured_kv_bytes_per_token(model),
    }
    if session is not None:
        report["measured_onnxruntime"] = ort_kv_bytes_per_token(session)
    report["matches"] = all(
        report[k] == report["bytes_per_token"] for k in report if k.startswith("measured_")
    )
    return report


# ------------------------------------------------------------------ the measurement


def measure_generation(
    models: Mapping[str, nn.Module],
    spec: GenerationBenchSpec | None = None,
    *,
    onnx_paths: Mapping[str, Path | str] | None = None,
    runtimes: tuple[str, ...] = RUNTIMES,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Prefill latency, decode tokens/s and KV bytes per token of every model, interleaved.

    Args:
        models: name -> ``*ForCausalLM`` (e.g. ``{"original": a, "compressed": b}``); every
            model is timed on the same token ids (the smallest vocabulary bounds them).
        spec: sizes and rounds (defaults: :class:`GenerationBenchSpec`).
        onnx_paths: name -> exported decoder file (:func:`export_decoder_onnx`); needed for
            the onnxruntime figures, which are skipped for a model without one.
        runtimes: subset of ``("torch", "onnxruntime")``.

    Returns:
        ``{"settings", "environment", "models": {name: {"prefill_ms": {runtime: {"BxS":
        stats}}, "decode": {runtime: {"tokens_per_s", "ms_per_token", "stats"}},
        "kv_cache": kv_cache_report}}, "notes"}``; ``stats`` as ``latency.summarize``.
    """

    spec = spec or GenerationBenchSpec()
    spec.validate()
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise DataError(f"unknown runtimes {unknown}", hint=f"use {', '.join(RUNTIMES)}")
    threads = spec.threads or physical_cores()
    vocab = min(vocab_size_of(m) for m in models.values())
    onnx_paths = dict(onnx_paths or {})
    notes = [f"{n}: no ONNX file, onnxruntime skipped" for n in models if n not in onnx_paths]
    sessions = {n: timing_session(p, threads=threads) for n, p in onnx_paths.items() if n in models}
    result: dict[str, dict[str, Any]] = {
        n: {
            "prefill_ms": {},
            "decode": {},
            "kv_cache": kv_cache_report(m, sessions.get(n)),
        }
        for n, m in models.items()
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    timing = {"warmup": spec.warmup, "rounds": spec.rounds, "iterations": spec.iterations}
    try:
        for runtime in runtimes:
            names = list(models) if runtime == "torch" else list(sessions)
            if not names:
                continue
            for batch, length in spec.prefill_shapes:
                ids = prompt_ids(vocab, batch, length, spec.seed)
                log(f"  prefill: {runtime} / {batch}x{length}")
                fns = {
                    n: torch_prefill_fn(models[n], ids)
                    if runtime == "torch"
                    else ort_prefill_fn(sessions[n], ids)
                    for n in names
                }
                stats = time_interleaved(fns, budget_s=spec.budget_s, **timing)
                for n, st in stats.items():
                    st.update(batch_size=batch, prompt_len=length)
                    result[n]["prefill_ms"].setdefault(runtime, {})[f"{batch}x{length}"] = st
            ids = prompt_ids(vocab, spec.decode_batch, spec.decode_prompt_len, spec.seed)
            log(f"  decode: {runtime} / batch {spec.decode_batch} / {spec.new_tokens} tokens")
            fns = {
                n: torch_decode_fn(models[n], ids, spec.new_tokens)
                if runtime == "torch"
                else ort_decode_fn(sessions[n], ids, spec.new_tokens)
                for n in names
            }
            stats = time_interleaved(fns, budget_s=spec.budget_s, **timing)
            tokens = spec.decode_batch * spec.new_tokens
            for n, st in stats.items():
                result[n]["decode"][runtime] = {
                    "tokens_per_s": round(tokens / (st["p50"] / 1e3), 2),
                    "ms_per_token": round(st["p50"] / spec.new_tokens, 4),
                    "batch_size": spec.decode_batch,
                    "prompt_len": spec.decode_prompt_len,
                    "new_tokens": spec.new_tokens,
                    "stats": st,
                }
    finally:
        torch.set_num_threads(previous)
    settings = asdict(spec)
    settings.update(threads=threads, interleaved=True, ort_spinning=False, runtimes=list(runtimes))
    return {
        "settings": settings,
        "environment": environment(threads),
        "models": result,
        "notes": notes,
    }


def generation_ratios(result: Mapping[str, Any], baseline: str, other: str) -> dict[str, Any]:
    """``other`` / ``baseline`` for every figure both have: prefill latency (lower is
    better), decode tokens/s (higher is better) and KV bytes per token."""
    a, b = result["models"][baseline], result["models"][other]
    ratios: dict[str, Any] = {"prefill_latency": {}, "decode_tokens_per_s": {}}
    for runtime, shapes in b["prefill_ms"].items():
        for key, st in shapes.items():
            ref = a["prefill_ms"].get(runtime, {}).get(key)
            if ref:
                ratios["prefill_latency"].setdefault(runtime, {})[key] = round(
                    st["p50"] / ref["p50"], 3
                )
    for runtime, dec in b["decode"].items():
        ref = a["decode"].get(runtime)
        if ref:
            ratios["decode_tokens_per_s"][runtime] = round(
                dec["tokens_per_s"] / ref["tokens_per_s"], 3
            )
    ratios["kv_bytes_per_token"] = round(
        b["kv_cache"]["bytes_per_token"] / a["kv_cache"]["bytes_per_token"], 3
    )
    return ratios
