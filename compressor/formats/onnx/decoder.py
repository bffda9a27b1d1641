"""ONNX export of a Hugging Face decoder LM *with* past key/values, verified step by step.

One graph serves prefill (past length 0) and decode (one new token, past length > 0), named
as Optimum and onnxruntime-genai name it:

* inputs ``input_ids`` (batch, seq), ``attention_mask`` (batch, past + seq), ``position_ids``
  (batch, seq), ``past_key_values.{i}.key`` / ``.value`` (batch, kv_heads, past, head_dim);
* outputs ``logits`` (batch, seq, vocab), ``present.{i}.key`` / ``.value``
  (batch, kv_heads, past + seq, head_dim).

transformers 5 passes the cache as a ``Cache`` object, which no exporter takes as a graph
input; :class:`DecoderWithPast` takes the flat tensors, fills a ``DynamicCache`` and returns
the grown cache flat again. The cache is always a full (growing) one, also for sliding-window
models (Mistral, Gemma 2): their masks apply the window, so the logits are exact at any
length; only the presents keep more than the window.

Exporter choice: the legacy TorchScript exporter (``dynamo=False``) is the default. Both
exporters produced correct graphs for the tested architectures (torch 2.13, transformers
5.24), but the torch.export-based one took about 60 s for a 2-layer, hidden-64 Llama on this
machine against about 2 s, and needs every dynamic axis of size >= 2 in the example (it
specialises 0 and 1). Its graph is leaner, though: for the tiny Llama sample about a third of
the nodes (no per-step shape arithmetic), and onnxruntime prefilled 1 x 128 tokens in 9.8 ms
instead of 14.2 ms (the unpruned model 23.6 vs 26.2 ms), so a plan that ships a decoder for
onnxruntime can ask for it (``export.onnx.with_past_exporter``). ``exporter="auto"`` tries
dynamo first and falls back to legacy when dynamo raises or fails verification, as the
plain export's ``auto`` does. Whichever ran, the file is only published after it
matched torch in onnxruntime at prefill and over ``decode_steps`` greedy decode steps fed
back through its own presents."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import ExportError, first_line
from compressor.formats.onnx.decoder_cache import (
    DecoderWithPast,
    KVLayout,
    arch_name,
    checked_layout,
    io_names,
    position_ids_for,
    vocab_size_of,
)
from compressor.formats.onnx.decoder_verify import verify_decoder_onnx
from compressor.formats.onnx.export import (
    artifact_size,
    publish,
    quiet_exporter,
    staging_dir,
    to_external_data,
    wants_external_data,
)

EXPORTERS = ("legacy", "dynamo", "auto")


DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
# The export example: every dynamic axis >= 2 (torch.export specialises sizes 0 and 1).
EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST = 2, 3, 4


@contextlib.contextmanager
def _exportable_attention(model: nn.Module):
    # eager and sdpa trace into plain ONNX ops; flash / flex attention kernels do not.
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl in (None, "eager", "sdpa") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(impl)


def _run_exporter(
    kind: str, wrapper: nn.Module, layout: KVLayout, path: Path, opset: int, external: bool
) -> None:
    names, outputs = io_names(layout.num_layers)
    g = torch.Generator().manual_seed(0)
    vocab = vocab_size_of(wrapper.model)
    b, s, p = EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST
    ids = torch.randint(0, vocab, (b, s), generator=g)
    mask = torch.ones(b, p + s, dtype=torch.long)
    pos = position_ids_for(mask, s)
    dtype = next(wrapper.parameters()).dtype
    past = tuple(
        torch.randn(b, layout.num_kv_heads, p, layout.head_dim, generator=g).to(dtype)
        for _ in range(2 * layout.num_layers)
    )
    with quiet_exporter():
        if kind == "dynamo":
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            # total = past + seq, but Dim arithmetic only allows dim + int: a free dim it is.
            total, past_len = torch.export.Dim("total"), torch.export.Dim("past_len")
            dims = (
                {0: batch, 1: seq},
                {0: batch, 1: total},
                {0: batch, 1: seq},
                tuple({0: batch, 2: past_len} for _ in past),
            )
            torch.onnx.export(
                wrapper,
                args=(ids, mask, pos, *past),
                f=str(path),
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=dims,
                external_data=external,
            )
        else:
            axes: dict[str, dict[int, str]] = {
                "input_ids": {0: "batch", 1: "sequence_length"},
                "attention_mask": {0: "batch", 1: "total_sequence_length"},
                "position_ids": {0: "batch", 1: "sequence_length"},
                "logits": {0: "batch", 1: "sequence_length"},
            }
            axes.update({n: {0: "batch", 2: "past_sequence_length"} for n in names[3:]})
            axes.update({n: {0: "batch", 2: "total_sequence_length"} for n in outputs[1:]})
            torch.onnx.export(
                wrapper,
                args=(ids, mask, pos, *past),
                f=str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
            )
            if external:
                to_external_data(path)


def export_decoder_onnx(
    model: nn.Module,
    path: Path | str,
    *,
    exporter: str = "legacy",
    opset: int | None = None,
    atol: float = 1e-4,
    decode_steps: int = 8,
    verify: bool = True,
    external_data: str = "auto",
) -> dict[str, Any]:
    """Export a Hugging Face causal LM with past key/values to ``path`` and verify it.

    Args:
        model: a ``*ForCausalLM`` (any width, pruned or not); exported in float32 on CPU.
        path: the final ``.onnx`` file; written only once verified.
        exporter: ``"legacy"`` (TorchScript, fast), ``"dynamo"`` (torch.export) or
            ``"auto"`` (dynamo, then legacy if dynamo raises or fails verification).
        opset: ONNX opset; default 17 for legacy, 18 for dynamo.
        atol: largest |onnxruntime - torch| accepted for logits and presents.
        decode_steps: greedy decode steps verified after the prefill.
        verify: set False only to skip the check (the result then says so).
        external_data: ``"auto"`` (weights in ``<path>.data`` when the model is near
            protobuf's 2 GiB limit), ``"always"`` or ``"never"``.

    Returns:
        ``{"path", "size_bytes", "exporter", "fallback_reason", "opset", "external_data",
        "seconds", "architecture", "kv_layout", "inputs", "outputs", "verification"}``.

    Raises:
        ExportError: naming the architecture and every exporter's failure or mismatch.
    """
    if external_data not in ("auto", "always", "never"):
        raise ExportError(
            f"unknown external_data {external_data!r}", hint="use auto, always or never"
        )
    if exporter not in EXPORTERS:
        raise ExportError(
            f"unknown exporter {exporter!r} for the decoder export",
            hint=f"use one of: {', '.join(EXPORTERS)}",
        )
    path = Path(path)
    arch = arch_name(model)
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise ExportError(
            f"{arch} has no language-model head, so it has no next-token logits to export",
            hint="export the *ForCausalLM model, not its headless base model",
        )
    was_training = model.training
    source = model
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        # Export and verify in float32 on CPU: a portable graph and a meaningful 1e-4.
        model = copy.deepcopy(model).to("cpu", torch.float32)
    model.eval()
    layout = checked_layout(model)
    external = wants_external_data(model, external_data)
    kinds = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    problems: list[str] = []
    try:
        with _exportable_attention(model):
            for kind in kinds:
                use_opset = opset or DEFAULT_OPSET[kind]
                with staging_dir(path.parent) as stage:
                    staged = stage / path.name
                    wrapper = DecoderWithPast(model).eval()
                    t0 = time.perf_counter()
                    try:
                        with torch.no_grad():
                            _run_exporter(kind, wrapper, layout, staged, use_opset, external)
                    except Exception as e:  # any exporter failure means: try the next one
                        problems.append(f"{kind} exporter failed: {first_line(str(e))}")
                        continue
                    finally:
                        model.eval()  # the legacy exporter leaves modules in train mode
                    seconds = time.perf_counter() - t0
                    verification = None
                    if verify:
                        verification = verify_decoder_onnx(
                            model, staged, atol=atol, decode_steps=decode_steps
                        )
                        if not verification["passed"]:
                            problems.append(f"{kind} export: {verification['problem']}")
                            continue
                    publish(staged, path)
                inputs, outputs = io_names(layout.num_layers)
                return {
                    "path": str(path),
                    "size_bytes": artifact_size(path),
                    "exporter": kind,
                    "fallback_reason": problems[0] if problems else None,
                    "opset": use_opset,
                    "external_data": external,
                    "seconds": round(seconds, 2),
                    "architecture": arch,
                    "kv_layout": asdict(layout),
                    "inputs": inputs,
                    "outputs": outputs,
                    "verification": verification,
                }
    finally:
        source.train(was_training)
    raise ExportError(
        f"ONNX export with past key/values of {arch} failed: " + "; ".join(problems),
        hint="try exporter='auto' (or 'legacy' / 'dynamo'), or raise atol if that difference "
        "is acceptable",
    )
