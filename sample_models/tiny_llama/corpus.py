"""The tiny Llama's text: contiguous English documents that ship with Python, split BY TOPIC
and BY MODULE, plus the block chunking and the perplexity every tiny-Llama script shares.

Two sources, both read without importing anything:

* ``pydoc_data.topics`` (the language reference ``pydoc`` shows): one document per topic.
  Topics are split exactly as ``builtin:pydoc`` splits them (:func:`compressor.data.text.
  split_topics` on the topic's sentence count, 20% held out, seed 0), so a plan that distils
  on ``builtin:pydoc?split=train`` never sees this module's held-out topics either.
* docstrings of the standard library (parsed with ``ast``): one document per top-level module
  or package (``email`` is one document made of all of ``email/``), 10% of the characters held
  out by a seeded hash of the module name. Packages, not files, are the unit so that a held-out
  subject (say ``email``) is never half in training.

A document is its prose paragraphs (headings, indented code, grammar and doctest blocks are
dropped; wrapped lines are joined) separated by blank lines: running text for language
modelling, not isolated sentences. A held-out paragraph that also occurs in a training
document (pydoc repeats paragraphs under several topics; ``_pydatetime`` copies ``datetime``)
is removed from the held-out text so held-out perplexity never measures memorisation.

Everything is deterministic for one Python build (the text is that build's standard library).
"""

from __future__ import annotations

import ast
import functools
import math
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.data.text import UNDERLINE_RULE, prose_sentences, pydoc_topics, split_topics
from compressor.errors import DataError

PYDOC_HELDOUT = 0.2  # the same split as builtin:pydoc's default
DOCSTRING_HELDOUT = 0.1
SEED = 0
BLOCK_SIZE = 256
SOURCES = ("pydoc", "docstrings")

# Standard-library folders that are tests, tools or vendored code rather than documented API.
_SKIP_PARTS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "site-packages",
    "ensurepip",
    "pydoc_data",
    "__pycache__",
}
_MIN_WORDS = 5


def prose_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of reStructuredText-like text, each joined onto one line.

    The same filter as :func:`compressor.data.text.prose_sentences`, kept at paragraph level:
    a paragraph is dropped if it is a heading, indented (code, grammar), a doctest, shorter
    than five words or less than 60% letters (tables, signatures).
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip() and not UNDERLINE_RULE.match(ln)]
        if not lines or all(ln.startswith((" ", "\t")) for ln in lines):
            continue
        if any(ln.lstrip().startswith((">>>", "...")) for ln in lines):
            continue
        paragraph = re.sub(r"\s+", " ", " ".join(ln.strip() for ln in lines)).strip()
        letters = sum(c.isalpha() for c in paragraph)
        if len(paragraph.split()) >= _MIN_WORDS and letters >= 0.6 * len(paragraph):
            paragraphs.append(paragraph)
    return paragraphs


@functools.lru_cache(maxsize=1)
def pydoc_documents() -> dict[str, tuple[str, ...]]:
    """Topic name -> its prose paragraphs (topics without prose are left out)."""
    docs = {name: tuple(prose_paragraphs(text)) for name, text in sorted(pydoc_topics().items())}
    return {name: paras for name, paras in docs.items() if paras}


@functools.lru_cache(maxsize=1)
def docstring_documents() -> dict[str, tuple[str, ...]]:
    """Top-level standard-library module or package -> the prose paragraphs of its
    docstrings, files in sorted order, each file's docstrings in source order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: dict[str, list[str]] = {}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if _SKIP_PARTS.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue  # a few files are deliberately broken or not UTF-8
        module = rel.parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.setdefault(module, []).extend(prose_paragraphs(doc))
    if not docs:
        raise DataError(f"tiny_llama corpus: found no standard-library sources under {stdlib}")
    return {name: tuple(paras) for name, paras in sorted(docs.items()) if paras}


@functools.lru_cache(maxsize=1)
def split() -> dict[str, dict[str, list[str]]]:
    """``{"train": {source: [names]}, "heldout": {source: [names]}}``: which pydoc topics and
    which standard-library modules are held out. Disjoint by construction."""
    topics = {n: len(prose_sentences(t)) for n, t in pydoc_topics().items()}
    topics = {n: c for n, c in topics.items() if n in pydoc_documents()}
    p_train, p_held = split_topics(topics, PYDOC_HELDOUT, SEED)
    modules = {n: sum(len(p) for p in paras) for n, paras in docstring_documents().items()}
    d_train, d_held = split_topics(modules, DOCSTRING_HELDOUT, SEED)
    return {
        "train": {"pydoc": p_train, "docstrings": d_train},
        "heldout": {"pydoc": p_held, "docstrings": d_held},
    }


def _documents(source: str) -> dict[str, tuple[str, ...]]:
    if source == "pydoc":
        return pydoc_documents()
    if source == "docstrings":
        return docstring_documents()
    raise DataError(f"tiny_llama corpus: source must be one of {SOURCES}, not {source!r}")


def _check_sources(sources: Sequence[str]) -> None:
    for source in sources:
        _documents(source)


@functools.lru_cache(maxsize=1)
def _train_paragraphs() -> frozenset[str]:
    names = split()["train"]
    return frozenset(p for s in SOURCES for n in names[s] for p in _documents(s)[n])


def train_texts(sources: Sequence[str] = SOURCES) -> list[str]:
    """The training documents (one string per topic / module, paragraphs separated by blank
    lines), pydoc topics first, each source in name order."""
    _check_sources(sources)
    names = split()["train"]
    return ["\n\n".join(_documents(s)[n]) for s in sources for n in names[s]]


def heldout_texts(sources: Sequence[str] = SOURCES) -> list[str]:
    """The held-out documents: topics and modules never trained on, minus any paragraph that
    also occurs in a training document."""
    _check_sources(sources)
    names, seen = split()["heldout"], _train_paragraphs()
    texts = []
    for s in sources:
        for n in names[s]:
            paras = [p for p in _documents(s)[n] if p not in seen]
            if paras:
                texts.append("\n\n".join(paras))
    return texts


# ------------------------------------------------------------------ tokens and perplexity


def token_stream(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """All ``texts`` as one id list: each document is ``<s> ... </s>`` (the tokenizer adds the
    ``<s>``; the ``</s>`` is appended here so the model learns where a document ends)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tiny_llama corpus: the tokenizer has no eos_token", hint="set eos_token")
    stream: list[int] = []
    for ids in tokenizer(list(texts))["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    return stream


def blocks(tokenizer: Any, texts: Sequence[str], block_size: int = BLOCK_SIZE, tail=True):
    """The token stream of ``texts`` cut into consecutive ``block_size``-token blocks
    (a ``LongTensor`` [n, block_size]); ``tail`` returns the shorter last block separately
    (``(blocks, tail_or_None)``) so that perplexity counts every token, and training
    (``tail=False``) drops it."""
    import torch

    if block_size < 2:
        raise DataError(f"tiny_llama corpus: block_size must be at least 2, not {block_size}")
    stream = torch.tensor(token_stream(tokenizer, texts), dtype=torch.long)
    n = len(stream) // block_size
    full = stream[: n * block_size].view(n, block_size)
    if not tail:
        return full
    rest = stream[n * block_size :]
    return full, (rest.unsqueeze(0) if len(rest) >= 2 else None)


def mean_nll(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    block_size: int = BLOCK_SIZE,
    batch_size: int = 16,
    every: int = 1,
) -> tuple[float, int]:
    """``(mean next-token negative log-likelihood in nats, tokens predicted)`` of ``model``
    over ``texts`` cut into non-overlapping blocks (each block's first token is context only).
    ``every=k`` scores only every k-th full block (and no tail): a cheaper estimate on long
    text such as the whole training set.
    """
    import torch

    full, rest = blocks(tokenizer, texts, block_size)
    if every > 1:
        full, rest = full[::every], None
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    if rest is not None:
        batches.append(rest)
    if not batches:
        raise DataError("tiny_llama corpus: no text to measure perplexity on")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in batches:
                ids = ids.to(device)
                logits = model(input_ids=ids).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                )
                total += float(nll)
                count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count, count


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    block_size: int = BLOCK_SIZE,
    batch_size: int = 16,
    every: int = 1,
) -> float:
    """Per-token perplexity, ``exp(mean NLL)``, of a causal LM over ``texts`` (see
    :func:`mean_nll`). Comparable only between models that share the tokenizer."""
    return math.exp(mean_nll(model, tokenizer, texts, block_size, batch_size, every)[0])
