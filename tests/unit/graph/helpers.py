"""Helpers for the structural-edit engine tests: ONNX round trips, manifest rebuilds, and
the reference a removal must equal."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn as nn

from compressor.formats.compacted import fit_tensors_to_state
from compressor.formats.manifest import Snapshot, apply_manifest, diff
from compressor.graph import flatten_tensors


class Positional(nn.Module):
    """Named inputs as positional ones, every output tensor flat: what both exporters like."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.inner, self.names = model, names

    def forward(self, *args):
        return tuple(flatten_tensors(self.inner(**dict(zip(self.names, args, strict=True)))))


def export_and_run(model: nn.Module, inputs: dict[str, torch.Tensor], path) -> list[np.ndarray]:
    """Export with the legacy exporter (opset 17) and run the file in onnxruntime."""
    import onnxruntime as ort

    names = list(inputs)
    wrapper = Positional(model, names).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(inputs.values()),
            str(path),
            input_names=names,
            dynamo=False,
            opset_version=17,
        )
    model.eval()  # the legacy exporter can leave modules in train mode
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in inputs.items() if k in wanted})


def onnx_max_diff(model: nn.Module, inputs: dict[str, torch.Tensor], path) -> float:
    """Max ``|onnxruntime - torch|`` over the outputs the exported file returns."""
    got = export_and_run(model, inputs, path)
    with torch.no_grad():
        expected = [t.numpy() for t in flatten_tensors(model(**inputs))]
    diffs = [
        float(np.abs(g - e).max())
        for g, e in zip(got, expected, strict=False)
        if g.shape == e.shape
    ]
    assert diffs, "no ONNX output has the torch output's shape"
    return max(diffs)


def rebuild(fresh: nn.Module, pruned: nn.Module, before: Snapshot) -> nn.Module:
    """Replay the structure manifest of ``pruned`` on ``fresh`` and load its tensors, as
    ``compressor.formats.compacted.load_compressed`` does (no pickle)."""
    apply_manifest(fresh, diff(before, pruned))
    state = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    fit_tensors_to_state(fresh, state)
    fresh.load_state_dict(state, strict=True)
    return fresh.eval()


def zero_columns(model: nn.Module, name: str, columns) -> nn.Module:
    """A copy of ``model`` whose consumer ``name`` ignores input ``columns``: what removing
    the units feeding only those columns must compute."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref.get_submodule(name).weight[:, list(columns)] = 0
    return ref


def ignoring_units(model: nn.Module, group, units) -> nn.Module:
    """A copy of ``model`` whose consumers of ``group`` read nothing from ``units``."""
    ref = copy.deepcopy(model).eval()
    gone = set(group.channels(units))
    with torch.no_grad():
        for member in group.consumers():
            cols = [
                int(i) for i, r in zip(member.index, member.root, strict=True) if int(r) in gone
            ]
            layer = ref.get_submodule(member.name)
            per_group = layer.weight.shape[1]
            if getattr(layer, "groups", 1) > 1:  # grouped conv: input c is column c % per_group
                for c in cols:
                    g = c // per_group
                    rows = layer.weight.shape[0] // layer.groups
                    layer.weight[g * rows : (g + 1) * rows, c % per_group] = 0
            else:
                layer.weight[:, cols] = 0
    return ref
