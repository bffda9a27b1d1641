"""Python's own English documentation as running text for language models:
``builtin:python_docs``.

Two sources, both read without importing anything:

* ``pydoc_data.topics`` (the language reference ``pydoc`` shows): one document per topic.
  Topics are split exactly as ``builtin:pydoc`` splits them (:func:`compressor.data.text.
  split_topics` on the topic's sentence count, 20% held out, seed 0), so a plan that distils
  on ``builtin:pydoc?split=train`` never sees these held-out topics either.
* docstrings of the standard library (parsed with ``ast``): one document per top-level module
  or package (``email`` is one document made of all of ``email/``), 10% of the characters held
  out by a seeded hash of the module name. Packages, not files, are the unit so that a held-out
  subject (say ``email``) is never half in training.

A document is its prose paragraphs (headings, indented code, grammar and doctest blocks are
dropped; wrapped lines are joined) separated by blank lines: running text for language
modelling, not isolated sentences. A held-out paragraph that also occurs in a training
document (pydoc repeats paragraphs under several topics; ``_pydatetime`` copies ``datetime``)
is removed from the held-out text so held-out perplexity never measures memorisation.

As a data source the documents become consecutive token blocks for causal-LM training and
perplexity (see :mod:`compressor.data.lm_blocks`): ``builtin:python_docs?split=train|heldout
&sources=pydoc,docstrings&block=256&limit=N``. Everything is deterministic for one Python
build (the text is that build's standard library).
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compressor.data.lm_blocks import DEFAULT_BLOCK, token_blocks
from compressor.data.text import UNDERLINE_RULE, prose_sentences, pydoc_topics, split_topics
from compressor.errors import DataError

PYDOC_HELDOUT = 0.2  # the same split as builtin:pydoc's default
DOCSTRING_HELDOUT = 0.1
SEED = 0
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
        raise DataError(f"builtin:python_docs: found no standard-library sources under {stdlib}")
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
    raise DataError(f"builtin:python_docs: source must be one of {SOURCES}, not {source!r}")


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


# ------------------------------------------------------------------ the data source

OPTIONS = ("split", "sources", "block", "limit")


def _python_docs(options: Mapping[str, str], layout: Any, tokenizer: Callable | None = None):
    origin = "builtin:python_docs"
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DataError(
            f"{origin}: unknown option {', '.join(map(repr, unknown))}",
            hint=f"{origin} takes {', '.join(OPTIONS)}",
        )
    split_name = options.get("split", "train")
    if split_name not in ("train", "heldout"):
        raise DataError(f"{origin}: split must be train or heldout, not {split_name!r}")
    sources = tuple(s for s in options.get("sources", ",".join(SOURCES)).split(",") if s)
    for source in sources:
        if source not in SOURCES:
            raise DataError(
                f"{origin}: sources must be a comma-separated list of {', '.join(SOURCES)}, "
                f"not {source!r}"
            )
    texts = train_texts(sources) if split_name == "train" else heldout_texts(sources)
    return token_blocks(
        texts,
        tokenizer,
        layout,
        origin,
        block=options.get("block", str(DEFAULT_BLOCK)),
        limit=options.get("limit"),
        # Training drops the short last block; held-out text keeps it (padded) so that
        # perplexity counts every token.
        keep_tail=split_name == "heldout",
    )


_python_docs.needs_tokenizer = True  # type: ignore[attr-defined]

# Registered into compressor.data.sources.BUILTINS.
PYTHON_DOCS_BUILTINS = {"python_docs": _python_docs}
