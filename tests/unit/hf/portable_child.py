"""Run by test_portable_folders in a fresh process, from a temporary folder: load Hugging Face
folders with plain transformers or sentence-transformers where compress is not importable,
and save what they compute.

    python portable_child.py jobs.json   # -> prints a JSON report on its last line

This file is copied next to ``torchvision_cpu.py`` (tests/compat) into a temporary folder; it
nothing from the project.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path


def hide_compressor() -> None:
    """Drop every import route to ``compressor``: the test venv holds compress as an editable
    install (a meta-path finder), and a user deploying the folder has no compress at all."""
    for finder in list(sys.meta_path):
        if finder is importlib.machinery.PathFinder:
            continue  # the ordinary sys.path search: its entries are checked below
        find = getattr(finder, "find_spec", None)
        try:
            spec = find("compressor", None) if find is not None else None
        except Exception:
            spec = None
        if spec is not None:
            sys.meta_path.remove(finder)
    for entry in list(sys.path):
        if (Path(entry or ".") / "compressor" / "__init__.py").exists():
            sys.path.remove(entry)
    importlib.invalidate_caches()


def compressor_importable() -> bool:
    try:
        import compressor  # noqa: F401
    except ImportError:
        return False
    return True


def run_transformers(job: dict) -> dict:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    auto = getattr(transformers, job["auto"])
    model = auto.from_pretrained(job["folder"], trust_remote_code=job["trust"]).eval()
    inputs = load_file(job["inputs"])
    with torch.no_grad():
        out = getattr(model(**inputs), job["output"])
    save_file({"out": out.contiguous()}, job["result"])
    config = model.config
    return {
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "config_class": type(config).__name__,
        "heads_per_layer": getattr(config, "heads_per_layer", None),
        "ffn_per_layer": getattr(config, "ffn_per_layer", None),
    }


def run_sentence_transformers(job: dict) -> dict:
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(job["folder"], device="cpu", trust_remote_code=job["trust"])
    texts = job["texts"]
    embeddings = model.encode(texts, convert_to_tensor=True, batch_size=len(texts))
    features = model.tokenize(texts)
    tensors = {k: v.contiguous() for k, v in features.items() if hasattr(v, "contiguous")}
    save_file({"embeddings": embeddings.contiguous(), **tensors}, job["result"])
    return {
        "class": f"{type(model[0].auto_model).__module__}.{type(model[0].auto_model).__name__}",
        "modules": [type(m).__name__ for m in model],
    }


def main() -> None:
    hide_compressor()
    report: dict = {"compressor_importable": compressor_importable(), "jobs": []}
    import torch
    import torchvision_cpu  # noqa: F401  (the test-only shim, copied beside this file)

    torch.set_num_threads(1)
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run = run_sentence_transformers if job["kind"] == "sentence_transformers" else None
        report["jobs"].append((run or run_transformers)(job))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
