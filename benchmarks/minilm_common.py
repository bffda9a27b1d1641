"""Shared helpers of the MiniLM benchmarks (``benchmarks/minilm_*.py``): the shipped plan,
machine load, embeddings over a dataset and fidelity (cosine, Spearman) to the original."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "sample_models" / "minilm" / "plan.yaml"
# Out-of-domain English for every MiniLM benchmark: 500 standard-library docstring sentences.
OOD = "builtin:docstrings?limit=500&seed=0"


def machine_load() -> str:
    """``uptime``'s load averages and the CPU count, to say how busy the machine was."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def print_result(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result, default=str))


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def embed(model: Any, dataset: Any, batch_size: int = 64):
    """The model's outputs (sentence embeddings) over a ``NamedTensorDataset``, in order."""
    import torch

    outs = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            x = {k: v[i : i + batch_size] for k, v in dataset.inputs.items()}
            # Pad-free: cut columns that are padding in every row (exact for pooled outputs).
            if "attention_mask" in x:
                longest = int(x["attention_mask"].sum(1).max())
                x = {k: v[:, :longest] for k, v in x.items()}
            outs.append(model(**x).float())
    return torch.cat(outs)


def fidelity(student_out: Any, teacher_out: Any) -> dict[str, float]:
    """Mean cosine to the teacher and Spearman of the pairwise-similarity matrices."""
    import torch.nn.functional as F

    from compressor.measure.metrics import pairwise_similarity_spearman

    return {
        "cosine": round(float(F.cosine_similarity(student_out, teacher_out).mean()), 4),
        "spearman": round(pairwise_similarity_spearman(student_out, teacher_out), 4),
    }


def text_dataset(ctx: Any, source: str, tokenizer: Any = None):
    """A text data source tokenised for the run's model (or with ``tokenizer``)."""
    from compressor.data.sources import load_source, parse_source

    tok = tokenizer or ctx.data.tokenizer
    return load_source(parse_source(source), ctx.data.layout, tokenizer=tok)
