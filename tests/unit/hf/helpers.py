"""Tiny randomly initialised transformers models (built offline), saved as Hugging Face
folders and loaded through a real plan, plus the checks every architecture must pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.data.bundle import DataBundle
from compressor.plan.load import load_plan
from compressor.run.context import RunContext

HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB, SEQ = 32, 4, 8, 64, 100, 8


def _config(kind: str, layers: int) -> Any:
    import transformers

    if kind in ("bert", "roberta"):
        cls = transformers.BertConfig if kind == "bert" else transformers.RobertaConfig
        return cls(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=SEQ + 4,  # RoBERTa counts positions from padding_idx + 1
        )
    if kind == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=VOCAB,
            dim=HIDDEN,
            n_layers=layers,
            n_heads=HEADS,
            hidden_dim=FFN,
            max_position_embeddings=SEQ,
        )
    if kind == "vit":
        return transformers.ViTConfig(
            image_size=16,
            patch_size=8,
            num_channels=3,
            hidden_size=HIDDEN,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
        )
    if kind == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=layers,
            n_head=HEADS,
            n_inner=FFN,
            n_positions=SEQ,
            bos_token_id=0,
            eos_token_id=0,
        )
    if kind == "albert":
        return transformers.AlbertConfig(
            vocab_size=VOCAB,
            embedding_size=16,  # ALBERT factorises the embedding: smaller than the hidden size
            hidden_size=HIDDEN,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=SEQ,
        )
    if kind == "electra":
        return transformers.ElectraConfig(
            vocab_size=VOCAB,
            embedding_size=16,  # ELECTRA projects its embeddings up to the hidden size
            hidden_size=HIDDEN,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=SEQ,
        )
    raise ValueError(kind)


def tiny_model(kind: str, *, layers: int = 2, task: str = "base") -> nn.Module:
    """A seeded random transformers model of ``kind`` (base model, or sequence classifier)."""
    import transformers

    config = _config(kind, layers)
    if task == "classification":
        config.num_labels = 3
        model_cls = transformers.AutoModelForSequenceClassification
    else:
        model_cls = transformers.AutoModel
    torch.manual_seed(0)
    return model_cls.from_config(config).eval()


def input_block(kind: str) -> str:
    if kind == "vit":
        return "    pixel_values: {shape: [2, 3, 16, 16], dtype: float32}\n"
    return (
        f"    input_ids: {{shape: [2, {SEQ}], dtype: int64, low: 1, high: {VOCAB}}}\n"
        f"    attention_mask: {{shape: [2, {SEQ}], dtype: int64, low: 1, high: 2}}\n"
    )


def hf_context(
    tmp_path: Path, kind: str, *, layers: int = 2, task: str = "base"
) -> tuple[RunContext, nn.Module]:
    """Save a tiny model as a Hugging Face folder, load it through a plan (``model.hf``)
    and return the run context and the loaded ``HFModel``."""
    from compressor.formats.loading import load_model

    folder = tmp_path / f"{kind}_source"
    tiny_model(kind, layers=layers, task=task).save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # stands in for tokenizer files
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 8}\n')
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"model:\n  hf: {folder}\n  task: {task}\n  inputs:\n{input_block(kind)}"
        "export:\n  onnx: {exporter: legacy, opset: 17, atol: 1.0e-4, rtol: 0.0}\n"
    )
    loaded_plan = load_plan(plan)
    loaded = load_model(loaded_plan.plan.model, loaded_plan.base_dir)
    data = DataBundle(loaded_plan.plan, loaded_plan.base_dir, loaded.input_specs, None)
    ctx = RunContext(
        plan=loaded_plan.plan,
        base_dir=loaded_plan.base_dir,
        loaded=loaded,
        device=torch.device("cpu"),
        data=data,
        quiet=True,
    )
    ctx.original = ctx.frozen_copy(loaded.model)
    return ctx, loaded.model


@dataclass(frozen=True)
class Layout:
    """Where an architecture keeps its layers and what its attributes are called."""

    layers: str  # the ModuleList, inside the transformers model
    attention: str  # the attention module, inside a layer
    head_attrs: dict[str, str]  # role (heads / head_dim / total / hidden) -> attribute name
    widths: dict[str, tuple[str, str]]  # module inside a layer -> (attribute, role)


LAYOUTS = {
    "bert": Layout(
        "encoder.layer",
        "attention.self",
        {
            "heads": "num_attention_heads",
            "head_dim": "attention_head_size",
            "total": "all_head_size",
        },
        {
            "attention.self.query": ("out_features", "inner"),
            "attention.output.dense": ("in_features", "inner"),
            "intermediate.dense": ("out_features", "ffn"),
            "output.dense": ("in_features", "ffn"),
        },
    ),
    "distilbert": Layout(
        "transformer.layer",
        "attention",
        {"heads": "n_heads", "head_dim": "attention_head_size", "hidden": "dim"},
        {
            "attention.q_lin": ("out_features", "inner"),
            "attention.out_lin": ("in_features", "inner"),
            "ffn.lin1": ("out_features", "ffn"),
            "ffn.lin2": ("in_features", "ffn"),
        },
    ),
    "vit": Layout(
        "layers",
        "attention",
        {"heads": "num_attention_heads", "head_dim": "head_dim"},
        {
            "attention.k_proj": ("out_features", "inner"),
            "attention.o_proj": ("in_features", "inner"),
            "mlp.fc1": ("out_features", "ffn"),
            "mlp.fc2": ("in_features", "ffn"),
        },
    ),
    "gpt2": Layout(
        "h",
        "attn",
        {
            "heads": "num_heads",
            "head_dim": "head_dim",
            "total": "split_size",
            "hidden": "embed_dim",
        },
        {
            "attn.c_attn": ("nf", "packed"),
            "attn.c_proj": ("nx", "inner"),
            "mlp.c_fc": ("nf", "ffn"),
            "mlp.c_proj": ("nx", "ffn"),
        },
    ),
}
LAYOUTS["roberta"] = LAYOUTS["bert"]


def layer_facts(hf_model: nn.Module, kind: str) -> list[dict[str, int]]:
    """Per layer: the attention attributes and the widths of its projections, by role."""
    layout = LAYOUTS[kind]
    facts = []
    for layer in hf_model.get_submodule(layout.layers):
        attention = layer.get_submodule(layout.attention)
        entry = {role: getattr(attention, attr) for role, attr in layout.head_attrs.items()}
        for name, (attr, _) in layout.widths.items():
            entry[f"{name}.{attr}"] = getattr(layer.get_submodule(name), attr)
        facts.append(entry)
    return facts


def expected_facts(kind: str, heads: int, ffn: int) -> dict[str, int]:
    """What ``layer_facts`` must say with ``heads`` heads of HEAD_DIM and FFN width ``ffn``."""
    layout = LAYOUTS[kind]
    values = {"heads": heads, "head_dim": HEAD_DIM, "total": heads * HEAD_DIM, "hidden": HIDDEN}
    entry = {role: values[role] for role in layout.head_attrs}
    sizes = {"inner": heads * HEAD_DIM, "packed": 3 * heads * HEAD_DIM, "ffn": ffn}
    for name, (attr, role) in layout.widths.items():
        entry[f"{name}.{attr}"] = sizes[role]
    return entry
