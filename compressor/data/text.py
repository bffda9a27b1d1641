"""English text corpora that ship with Python, for distilling and evaluating text models offline.

* ``builtin:pydoc?split=train|heldout|all`` - sentences of the language reference that
  ``pydoc`` shows (``pydoc_data.topics``: 79 topics of real English prose on Python 3.11). The
  split is BY TOPIC: a topic's sentences are all in ``train`` or all in ``heldout`` (topics in
  a seeded-hash order until ``heldout`` of the sentences are held out), so held-out text is
  about subjects the training text never covers, not a re-shuffle of the same paragraphs.
* ``builtin:docstrings`` - sentences of the standard library's docstrings (read with ``ast``,
  nothing is imported): English of another kind (API descriptions), for out-of-domain checks.

Options (query string): ``heldout=0.2`` (share of sentences held out), ``seed=0``,
``windows=N`` (pydoc: add N random word windows of the same topics per sentence), ``limit=N``
(first N sentences after a seeded shuffle), ``max_length=N`` (tokens; default the model's
sequence length). Each example is tokenised with the model's tokenizer and the padding is
trimmed to the longest sentence of the set, which for short sentences makes every batch
several times cheaper than padding to 128 (the attention mask keeps results identical).

Sentence extraction keeps prose only: headings, grammar rules and indented code blocks are
dropped, wrapped lines are joined, and sentences shorter than five words are skipped.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import re
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from compressor.data.batches import NamedTensorDataset
from compressor.errors import DataError

# Standard-library modules whose docstrings are long, prose-heavy and not about the language
# reference itself (pydoc_data covers that), so they are out of the training domain.
DOCSTRING_MODULES = (
    "argparse.py",
    "calendar.py",
    "csv.py",
    "difflib.py",
    "email/message.py",
    "fractions.py",
    "ftplib.py",
    "gettext.py",
    "heapq.py",
    "imaplib.py",
    "locale.py",
    "logging/__init__.py",
    "mailbox.py",
    "shutil.py",
    "smtplib.py",
    "statistics.py",
    "subprocess.py",
    "tarfile.py",
    "textwrap.py",
    "threading.py",
    "turtle.py",
    "urllib/request.py",
    "zipfile/__init__.py",
    "zipfile.py",
    "http/client.py",
    "http/cookiejar.py",
    "datetime.py",
    "_pydatetime.py",
    "random.py",
    "socket.py",
    "ssl.py",
    "tempfile.py",
    "unittest/case.py",
    "pathlib.py",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
UNDERLINE_RULE = re.compile(r"^\s*([*=\-~^#+])\1{2,}\s*$")
_MIN_WORDS = 5


def prose_sentences(text: str) -> list[str]:
    """The prose sentences of reStructuredText-like text (pydoc topics, docstrings)."""
    sentences: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        # Headings are underlined; indented blocks are code, grammar or examples.
        lines = [ln for ln in lines if not UNDERLINE_RULE.match(ln)]
        if not lines or all(ln.startswith((" ", "\t")) for ln in lines):
            continue
        if any(ln.lstrip().startswith((">>>", "...")) for ln in lines):
            continue
        paragraph = " ".join(ln.strip() for ln in lines)
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = sentence.strip()
            words = sentence.split()
            letters = sum(c.isalpha() for c in sentence)
            # Mostly letters: drops grammar fragments and tables that slipped through.
            if len(words) >= _MIN_WORDS and letters >= 0.6 * len(sentence):
                sentences.append(sentence)
    return sentences


def _topic_rank(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_topics(
    sizes: Mapping[str, int], heldout: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train topics, held-out topics)`` from each topic's size (its sentence count).

    A seeded hash orders the topics; topics are held out in that order until the held-out part
    has at least ``heldout`` of all sentences (counting sentences, not topics, because topic
    sizes differ a hundredfold). Deterministic and disjoint by construction.
    """
    if not 0 < heldout < 1:
        raise DataError(f"builtin:pydoc: heldout must be between 0 and 1, not {heldout}")
    ordered = sorted(sizes, key=lambda n: _topic_rank(n, seed))
    total = sum(sizes.values())
    held: set[str] = set()
    count = 0
    for name in ordered:
        if count >= heldout * total or len(held) == len(ordered) - 1:
            break
        held.add(name)
        count += sizes[name]
    return sorted(n for n in sizes if n not in held), sorted(held)


def pydoc_topics() -> dict[str, str]:
    """Topic name -> text of Python's own ``pydoc_data.topics``."""
    try:
        from pydoc_data.topics import topics  # deferred: 1 MB of data, only for builtin:pydoc
    except ImportError:  # some distributions strip it
        raise DataError(
            "builtin:pydoc needs the standard library's pydoc_data package, which this Python "
            "lacks",
            hint="use a text file (data.train: corpus.txt) instead",
        ) from None
    return dict(topics)


def pydoc_sentences(
    split: str = "train", heldout: float = 0.2, seed: int = 0, windows: int = 0
) -> list[str]:
    """Sentences of the pydoc topics in ``split`` (train, heldout or all), in topic order;
    ``windows`` adds that many random word windows per sentence (see :func:`word_windows`)."""
    if split not in ("train", "heldout", "all"):
        raise DataError(f"builtin:pydoc: split must be train, heldout or all, not {split!r}")
    per_topic = _pydoc_prose()
    train, held = split_topics({n: len(s) for n, s in per_topic.items()}, heldout, seed)
    chosen = {"train": train, "heldout": held, "all": sorted(per_topic)}[split]
    sentences = _unique(s for name in chosen for s in per_topic[name])
    if windows:
        extra = (w for name in chosen for w in word_windows(per_topic[name], windows, name, seed))
        sentences = _unique([*sentences, *extra])
    if split == "heldout":
        # pydoc repeats some paragraphs under several topics: a held-out sentence must never
        # have been seen in training.
        seen = {s for name in train for s in per_topic[name]}
        sentences = [s for s in sentences if s not in seen]
    return sentences


def word_windows(
    sentences: list[str],
    per_sentence: int,
    name: str,
    seed: int,
    shortest: int = 6,
    longest: int = 40,
) -> list[str]:
    """Random spans of ``shortest``-``longest`` words of a topic's running text, crossing
    sentence boundaries: more distinct inputs from the same text, so that distillation sees
    new token contexts each epoch instead of memorising a thousand sentences."""
    words = " ".join(sentences).split()
    if len(words) < shortest:
        return []
    rng = random.Random(f"{seed}:{name}")
    spans = []
    for _ in range(per_sentence * len(sentences)):
        n = rng.randint(shortest, min(longest, len(words)))
        start = rng.randint(0, len(words) - n)
        spans.append(" ".join(words[start : start + n]))
    return spans


@functools.lru_cache(maxsize=1)
def _pydoc_prose() -> dict[str, list[str]]:
    # Parsed once per process: every split (and every test) reads the same topics.
    return {name: prose_sentences(text) for name, text in pydoc_topics().items()}


def docstring_sentences(modules: tuple[str, ...] = DOCSTRING_MODULES) -> list[str]:
    """Sentences of the docstrings of standard-library modules (parsed, never imported)."""
    return list(_read_docstrings(modules))


@functools.lru_cache(maxsize=4)
def _read_docstrings(modules: tuple[str, ...]) -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for rel in modules:
        path = stdlib / rel
        if not path.is_file():
            continue  # differs across Python versions; the rest is enough
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    found.extend(prose_sentences(doc))
    if not found:
        raise DataError("builtin:docstrings: found no standard-library source files to read")
    return tuple(_unique(found))


def _unique(sentences: Any) -> list[str]:
    return list(dict.fromkeys(sentences))


def sample(sentences: list[str], limit: int | None, seed: int) -> list[str]:
    """At most ``limit`` sentences, chosen by a seeded shuffle (all, in order, without one)."""
    if limit is None or limit >= len(sentences):
        return list(sentences)
    chosen = random.Random(seed).sample(range(len(sentences)), limit)
    return [sentences[i] for i in sorted(chosen)]


# ------------------------------------------------------------------ data sources


def _int_option(options: Mapping[str, str], key: str, origin: str) -> int | None:
    if key not in options:
        return None
    try:
        value = int(options[key])
    except ValueError:
        raise DataError(f"{origin}: {key} must be an integer, not {options[key]!r}") from None
    if value < 1:
        raise DataError(f"{origin}: {key} must be at least 1")
    return value


def encode(
    sentences: list[str],
    tokenizer: Callable | None,
    layout: Any,
    origin: str,
    max_length: int | None = None,
):
    """Tokenise ``sentences`` into a ``NamedTensorDataset`` whose padding is trimmed to the
    longest sentence (at most ``max_length`` tokens)."""

    if tokenizer is None:
        raise DataError(
            f"{origin} is text and needs the model's tokenizer, which is missing",
            hint="use an hf model folder with tokenizer files, or set model.tokenizer",
        )
    encoded = tokenizer(sentences)
    missing = [n for n in layout.names if n not in encoded]
    if missing:
        raise DataError(f"{origin}: the tokenizer produces {sorted(encoded)}, not {missing}")
    mask = encoded.get("attention_mask")
    longest = int(mask.sum(1).max()) if mask is not None else encoded["input_ids"].shape[1]
    if max_length is not None:
        longest = min(longest, max_length)
    arrays = {n: encoded[n][:, :longest].contiguous() for n in layout.names}
    if max_length is not None and longest < encoded["input_ids"].shape[1]:
        _end_with_separator(arrays, encoded, longest)
    return NamedTensorDataset(arrays)


def _end_with_separator(arrays: dict, encoded: dict, length: int) -> None:
    # Cutting a sentence short must keep the [SEP] it ended with, as the tokenizer's own
    # truncation would; the id is whatever the last real token was.
    ids, mask = arrays["input_ids"], encoded["attention_mask"]
    lengths = mask.sum(1)
    last = encoded["input_ids"][range(len(ids)), (lengths - 1).clamp_min(0)]
    cut = lengths > length
    ids[cut, length - 1] = last[cut]


def _text_source(name: str, get: Callable[[Mapping[str, str]], list[str]]):
    def source(options: Mapping[str, str], layout: Any, tokenizer: Callable | None = None):
        origin = f"builtin:{name}"
        try:
            seed = int(options.get("seed", "0"))
        except ValueError:
            raise DataError(f"{origin}: seed must be an integer") from None
        sentences = sample(get(options), _int_option(options, "limit", origin), seed)
        return encode(
            sentences, tokenizer, layout, origin, _int_option(options, "max_length", origin)
        )

    source.needs_tokenizer = True  # type: ignore[attr-defined]
    source.__doc__ = f"builtin:{name} as a tokenised dataset (see compressor.data.text)."
    return source


def _pydoc(options: Mapping[str, str]) -> list[str]:
    try:
        heldout = float(options.get("heldout", "0.2"))
        seed = int(options.get("seed", "0"))
        windows = int(options.get("windows", "0"))
    except ValueError:
        raise DataError(
            "builtin:pydoc: heldout must be a number, seed and windows integers"
        ) from None
    return pydoc_sentences(options.get("split", "train"), heldout, seed, windows)


def _docstrings(options: Mapping[str, str]) -> list[str]:
    return docstring_sentences()


# Registered into compressor.data.sources.BUILTINS (each takes options, layout and the tokenizer).
TEXT_BUILTINS = {
    "pydoc": _text_source("pydoc", _pydoc),
    "docstrings": _text_source("docstrings", _docstrings),
}
