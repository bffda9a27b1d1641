"""Checking an exported decoder against torch (prefill with left padding, then greedy decode
steps each side feeding back its own presents) and greedy generation over an onnxruntime
session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import ExportError
from compressor.formats.onnx.decoder_cache import (
    DecoderWithPast,
    KVLayout,
    empty_past,
    io_names,
    kv_layout,
    position_ids_for,
    vocab_size_of,
)
from compressor.formats.onnx.session import ort_session


def verify_decoder_onnx(
    model: nn.Module,
    path: Path | str,
    *,
    atol: float = 1e-4,
    decode_steps: int = 8,
    batch: int = 2,
    prompt_len: int = 7,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare ``path`` in onnxruntime with ``model`` in torch: a prefill (past length 0, the
    second row left-padded by 2), then ``decode_steps`` single-token steps, each side fed
    its own presents and both fed torch's greedy token (a near-tie then cannot send them
    down different paths). Logits and presents are compared at unpadded positions.

    Returns:
        ``{"passed", "atol", "problem", "prefill": {"logits", "present"}, "decode":
        [{"step", "logits", "present"}], "max_abs_diff", "present_shapes_ok"}``.
    """

    model.eval()
    layout = kv_layout(model)
    session = ort_session(path)
    in_names, _ = io_names(layout.num_layers)
    missing = [n for n in in_names if n not in {i.name for i in session.get_inputs()}]
    if missing:
        return _failed(atol, f"the graph lacks inputs {missing[:3]}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size_of(model), (batch, prompt_len), generator=g)
    mask = torch.ones(batch, prompt_len, dtype=torch.long)
    if batch > 1 and prompt_len > 3:
        mask[1, :2] = 0  # left padding, as batched generation feeds it
    wrapper = DecoderWithPast(model).eval()
    t_past = empty_past(layout, batch)
    o_past = [t.numpy() for t in t_past]
    steps: list[dict[str, Any]] = []
    new_ids = ids
    for step in range(decode_steps + 1):
        seq = new_ids.shape[1]
        pos = position_ids_for(mask, seq)
        with torch.no_grad():
            ref = wrapper(new_ids, mask, pos, *t_past)
        feeds = {"input_ids": new_ids.numpy(), "attention_mask": mask.numpy()}
        feeds["position_ids"] = pos.numpy()
        feeds.update(zip(in_names[3:], o_past, strict=True))
        got = session.run(None, feeds)
        keep = mask[:, -seq:].bool().numpy()  # compare real tokens only
        logits = _masked_diff(ref[0].numpy(), got[0], keep, axis=1)
        total_keep = mask.bool().numpy()
        present = 0.0
        for r, o in zip(ref[1:], got[1:], strict=True):
            if r.shape != o.shape:
                return _failed(
                    atol,
                    f"present shape {list(o.shape)} != torch {list(r.shape)} at step {step}",
                )
            present = max(present, _masked_diff(r.numpy(), o, total_keep, axis=2))
        steps.append({"step": step, "logits": logits, "present": present})
        expected = (batch, layout.num_kv_heads, mask.shape[1], layout.head_dim)
        if tuple(ref[1].shape) != expected:
            return _failed(
                atol,
                f"torch's present.0.key has shape {list(ref[1].shape)}, but the config "
                f"states {list(expected)} (num_key_value_heads / head_dim stale?)",
            )
        # Next step: torch's greedy token for both; each side keeps its own cache.
        nxt = ref[0][:, -1].argmax(-1, keepdim=True)
        t_past, o_past = list(ref[1:]), list(got[1:])
        new_ids = nxt
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
    worst = max(max(s["logits"], s["present"]) for s in steps)
    # `not <=` also catches NaN (a NaN comparison is False).
    bad = [s for s in steps if not max(s["logits"], s["present"]) <= atol]
    problem = None
    if bad:
        first = bad[0]
        where = "prefill" if first["step"] == 0 else f"decode step {first['step']}"
        problem = (
            f"onnxruntime differs from torch at {where}: max |diff| logits "
            f"{first['logits']:.3g}, presents {first['present']:.3g} (atol {atol:g})"
        )
    return {
        "passed": not bad,
        "atol": atol,
        "problem": problem,
        "prefill": steps[0],
        "decode": steps[1:],
        "max_abs_diff": worst,
        "present_shapes_ok": True,
    }


def _masked_diff(ref: np.ndarray, got: np.ndarray, keep: np.ndarray, axis: int) -> float:
    if ref.shape != got.shape:
        return float("inf")
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    # keep: (batch, positions); move positions to the compared axis and broadcast.
    shape = [1] * diff.ndim
    shape[0], shape[axis] = keep.shape
    sel = np.broadcast_to(keep.reshape(shape), diff.shape)
    picked = diff[sel]
    if picked.size and not np.all(np.isfinite(picked)):
        return float("inf")
    return float(picked.max()) if picked.size else 0.0


def _failed(atol: float, problem: str) -> dict[str, Any]:
    return {
        "passed": False,
        "atol": atol,
        "problem": problem,
        "prefill": None,
        "decode": [],
        "max_abs_diff": None,
        "present_shapes_ok": False,
    }


def session_layout(session: Any) -> KVLayout:
    """The KV layout an exported session declares (its past inputs' static axes).

    Raises:
        ExportError: the session has no ``past_key_values.{i}.key`` inputs.
    """
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    keys = [i for i in pasts if i.name.endswith(".key")]
    if not keys or not isinstance(keys[0].shape[1], int) or not isinstance(keys[0].shape[3], int):
        raise ExportError(
            "the ONNX session has no past_key_values.{i}.key inputs with static head axes",
            hint="export the model with compressor.formats.onnx.decoder_verify.export_decoder_onnx",
        )
    dtype_bytes = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(double)": 8}.get(
        keys[0].type, 4
    )
    return KVLayout(len(keys), keys[0].shape[1], keys[0].shape[3], dtype_bytes)


def ort_generate(
    session: Any,
    input_ids: torch.Tensor | np.ndarray,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | np.ndarray | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> np.ndarray:
    """Greedy generation over an onnxruntime session of an exported decoder with past.

    Args:
        session: an ``onnxruntime.InferenceSession`` of :func:`export_decoder_onnx`'s file.
        input_ids: (batch, prompt_len) token ids (left-padded when rows differ in length).
        max_new_tokens: tokens to add per row.
        attention_mask: 1 for real tokens, 0 for (left) padding; all ones by default.
        eos_token_id: a row that emits it is finished; later positions get ``pad_token_id``
            (default: the eos id), and generation stops when every row is finished.

    Returns:
        int64 array (batch, prompt_len + generated), as ``generate()`` returns it.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    layout = session_layout(session)
    in_names = [i.name for i in session.get_inputs()]
    np_dtype = {2: np.float16, 4: np.float32, 8: np.float64}[layout.dtype_bytes]
    past = [
        np.zeros((ids.shape[0], layout.num_kv_heads, 0, layout.head_dim), np_dtype)
        for _ in range(2 * layout.num_layers)
    ]
    past_names = [n for n in in_names if n.startswith("past_key_values.")]
    pad = eos_token_id if pad_token_id is None else pad_token_id
    finished = np.zeros(ids.shape[0], dtype=bool)
    out, step_ids = ids, ids
    for _ in range(max_new_tokens):
        pos = position_ids_for(torch.from_numpy(mask), step_ids.shape[1]).numpy()
        feeds = {"input_ids": step_ids, "attention_mask": mask, "position_ids": pos}
        feeds.update(zip(past_names, past, strict=True))
        got = session.run(None, feeds)
        nxt = got[0][:, -1].argmax(-1).astype(np.int64)
        if eos_token_id is not None:
            nxt = np.where(finished, pad, nxt)
            finished |= nxt == eos_token_id
        out = np.concatenate([out, nxt[:, None]], axis=1)
        if eos_token_id is not None and finished.all():
            break
        past = list(got[1:])
        step_ids = nxt[:, None]
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
    return out
