"""Scale: time and peak memory of each phase on a BERT-base-sized model (110M parameters).

A randomly initialised ``BertConfig()`` (hidden 768, 12 layers, 12 heads, FFN 3072, vocab
30,522) is saved as a Hugging Face folder, then driven through the library exactly as
``compress run`` does: load (memory-mapped safetensors), graph analysis, pruning of 50% of the
heads and 50% of the FFN width, safetensors export, ONNX export with verification.

Peak memory is the process's resident high-water mark during each phase (Linux VmHWM, reset
before the phase by writing 5 to /proc/self/clear_refs), reported both absolute and above the
resident size before the phase.

    python benchmarks/scale_bert_base.py [--exporter legacy|dynamo|auto]

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import torch


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phase:
    """Times a block and records its resident-memory high-water mark."""

    results: ClassVar[dict[str, dict[str, float]]] = {}

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        gc.collect()
        self.resettable = reset_peak()
        self.before = rss_kb()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.start
        peak = rss_kb("VmHWM") if self.resettable else rss_kb()
        Phase.results[self.name] = {
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak / 1024, 1),
            "peak_above_start_mb": round((peak - self.before) / 1024, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo", "auto"])
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    from transformers import BertConfig, BertModel

    from compressor.counting import count_params
    from compressor.data.bundle import DataBundle
    from compressor.formats.export import export_model
    from compressor.formats.loading import load_model
    from compressor.formats.manifest import diff, snapshot
    from compressor.graph import StructureGraph
    from compressor.plan.load import load_plan
    from compressor.run.context import RunContext
    from compressor.stages.registry import get_stage

    torch.manual_seed(0)
    baseline_mb = rss_kb() / 1024
    work = Path(tempfile.mkdtemp(prefix="compress-scale-"))
    folder = work / "bert-base"
    model = BertModel(BertConfig())
    params = count_params(model)
    fp32_mb = params * 4 / 2**20
    model.save_pretrained(folder)
    del model
    gc.collect()

    plan_path = work / "plan.yaml"
    plan_path.write_text(
        f"model:\n  hf: {folder}\n  task: embedding\n"
        f"  inputs:\n    input_ids: {{shape: [1, {args.seq}], dtype: int64, low: 0, high: 30522}}\n"
        f"    attention_mask: {{shape: [1, {args.seq}], dtype: int64, low: 1, high: 2}}\n"
        "stages:\n  - prune: {heads: 0.5, ffn: 0.5, criterion: l2}\n"
        f"export: {{formats: [safetensors, onnx], onnx: {{exporter: {args.exporter}}}}}\n"
        "bench: {enabled: false}\n"
    )
    loaded_plan = load_plan(plan_path)
    plan = loaded_plan.plan
    with Phase("load"):
        loaded = load_model(plan.model, loaded_plan.base_dir)
    model = loaded.model
    data = DataBundle(plan, loaded_plan.base_dir, loaded.input_specs)
    ctx = RunContext(
        plan=plan,
        base_dir=loaded_plan.base_dir,
        loaded=loaded,
        device=torch.device("cpu"),
        data=data,
        quiet=True,
    )
    example = ctx.example_inputs()
    before = snapshot(model)
    with Phase("graph_analysis"):
        graph = StructureGraph(model, example)
        groups = len(graph.prunable())
    del graph
    name, cfg = plan.stage_list()[0]
    ctx.stage_index, ctx.stage_name = 0, name
    with Phase("prune_with_graph"):
        model = get_stage(name).apply(model, cfg, ctx)
    pruned_params = count_params(model)
    manifest = diff(before, model)
    out = work / "out"
    with Phase("export_safetensors_onnx"):
        artifacts = export_model(model, ctx, out, manifest)

    # The same plan through the real CLI, in a child process: end-to-end peak memory.
    start = time.perf_counter()
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "run",
            str(plan_path),
            "--out",
            str(work / "cli"),
            "--no-bench",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    cli_seconds = time.perf_counter() - start
    cli_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if child.returncode != 0:
        print(child.stdout[-2000:], child.stderr[-2000:])

    results = Phase.results
    prune_s = results["prune_with_graph"]["seconds"]
    prune_peak = results["prune_with_graph"]["peak_rss_mb"]
    print(
        f"BERT-base: {params / 1e6:.1f}M params ({fp32_mb:.0f} MB float32), "
        f"{groups} prunable groups; pruned to {pruned_params / 1e6:.1f}M"
    )
    print(f"resident memory after imports: {baseline_mb:.0f} MB")
    print(f"{'phase':<26}{'seconds':>9}{'peak RSS MB':>13}{'above start':>13}")
    for phase, r in results.items():
        print(
            f"{phase:<26}{r['seconds']:>9.2f}{r['peak_rss_mb']:>13.1f}"
            f"{r['peak_above_start_mb']:>13.1f}"
        )
    sizes = {
        k: v["size_bytes"]
        for k, v in artifacts.items()
        if isinstance(v, dict) and "size_bytes" in v
    }
    print(f"artifacts: {sizes}")
    print(
        f"compress run (prune + export, no bench) in a child process: {cli_seconds:.1f} s, "
        f"peak RSS {cli_peak_mb:.0f} MB = {cli_peak_mb / fp32_mb:.2f}x float32 bytes "
        f"(exit {child.returncode})"
    )
    print(
        f"pruning (graph analysis included): {prune_s:.1f} s (target < 60 s); peak RSS "
        f"{prune_peak:.0f} MB = {prune_peak / fp32_mb:.2f}x the model's float32 bytes "
        f"(target < 3x; {(prune_peak - baseline_mb) / fp32_mb:.2f}x above the import baseline)"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "params": params,
                "params_after": pruned_params,
                "fp32_mb": round(fp32_mb, 1),
                "import_baseline_mb": round(baseline_mb, 1),
                "groups": groups,
                "phases": results,
                "prune_seconds": prune_s,
                "prune_peak_over_fp32": round(prune_peak / fp32_mb, 3),
                "prune_peak_above_baseline_over_fp32": round(
                    (prune_peak - baseline_mb) / fp32_mb, 3
                ),
                "artifact_bytes": sizes,
                "exporter": args.exporter,
                "cli_run_seconds": round(cli_seconds, 1),
                "cli_run_peak_rss_mb": round(cli_peak_mb, 1),
                "cli_run_peak_over_fp32": round(cli_peak_mb / fp32_mb, 3),
                "cli_exit": child.returncode,
            }
        )
    )


if __name__ == "__main__":
    main()
