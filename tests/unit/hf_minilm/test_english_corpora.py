"""General English corpora (WordNet, news, reviews) and builtin:mix: parsed from the packages'
own files, deterministic, split by natural groups with no shared sentences, weights honoured,
and every bad option refused with a DataError that names it."""

from __future__ import annotations

import pytest

from compressor.data import english as E
from compressor.data import text as T
from compressor.data.sources import BUILTINS, parse_source
from compressor.errors import DataError
from tests.unit.hf_minilm.test_text_data import _layout, _tokenize

# A real data.adj line of WordNet 3.0 (pointers shortened): hexadecimal word count 0a would
# be ten words, a syntactic marker on "galore(ip)", two quoted usage examples.
LINE = (
    "00015247 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in "
    'abundance; "abounding confidence"; "whiskey galore"  '
)


def _assert_split_by_group(groups, train, held) -> set[str]:
    """Every group is wholly on one side; returns the held-out groups."""
    held_set = set(held)
    held_groups = {n for n, texts in groups.items() if set(texts) & held_set}
    from_train_groups = {s for n in groups if n not in held_groups for s in groups[n]}
    assert from_train_groups == set(train) and not held_set & set(train)
    in_held_groups = {s for n in held_groups for s in groups[n]}
    assert held_set == in_held_groups - from_train_groups
    return held_groups


def test_a_wordnet_line_gives_its_words_definition_and_examples():
    gloss = E.parse_wordnet_line(LINE, {0: "adj.all"})
    assert gloss == E.Gloss(
        "adj.all", ("abounding", "galore"), "existing in abundance",
        ("abounding confidence", "whiskey galore"),
    )  # fmt: skip
    assert E.parse_wordnet_line("  1 This software and database is being provided", {}) is None
    wide = "00000001 05 n 0b " + " ".join(f"w{i} 0" for i in range(11)) + " 000 | a gloss"
    assert len(E.parse_wordnet_line(wide, {}).words) == 11  # 0b is hexadecimal


@pytest.mark.slow  # parses the WordNet database once (about 5 s)
def test_wordnet_is_split_by_lexicographer_file_deterministically_and_disjointly():
    groups = E.wordnet_groups("all")
    assert len(groups) == 45 and {"noun.food", "verb.motion", "adj.all"} <= set(groups)
    train = E.corpus_sentences("wordnet", {"split": "train"})
    held = E.corpus_sentences("wordnet", {"split": "heldout"})
    assert len(train) > 100_000 and len(held) > 20_000
    assert not set(train) & set(held)
    assert E.corpus_sentences("wordnet", {"split": "heldout"}) == held
    # Whole lexicographer files are held out (a sentence a training file also has is dropped).
    held_files = _assert_split_by_group(groups, train, held)
    assert 2 <= len(held_files) < 40
    other = E.corpus_sentences("wordnet", {"split": "heldout", "seed": "1"})
    assert set(other) != set(held)  # the seed holds out other files
    share = len(held) / (len(train) + len(held))
    assert 0.15 <= share < 0.5
    examples = E.corpus_sentences("wordnet", {"split": "all", "kind": "examples"})
    definitions = E.corpus_sentences("wordnet", {"split": "all", "kind": "definitions"})
    assert "the dog barked all night" in examples
    assert any(d.startswith("dog: a member of the genus Canis") for d in definitions)
    assert not set(examples) & set(definitions) and min(len(e.split()) for e in examples) >= 3


def test_news_is_split_by_article():
    articles = E.news_articles()
    assert len(articles) == 350 and sum(map(len, articles)) > 2500
    groups = {f"{i:03d}": list(a) for i, a in enumerate(articles)}
    train = E.corpus_sentences("news", {"split": "train"})
    held = E.corpus_sentences("news", {"split": "heldout"})
    assert len(_assert_split_by_group(groups, train, held)) >= 50
    more = E.corpus_sentences("news", {"split": "heldout", "heldout": "0.3"})
    assert len(more) > len(held) and E.corpus_sentences("news", {"split": "heldout"}) == held
    everything = E.corpus_sentences("news", {"split": "all"})
    assert set(train) | set(held) == set(everything)
    assert any(s.startswith("Argentina's political and economic crisis") for s in everything)


def test_reviews_are_detokenised_and_filter_by_label():
    reviews = E.review_snippets()
    assert len(reviews) == 200 and {label for label, _ in reviews} == {"pos", "neg"}
    assert E.detokenize("it 's so laddish , only teenage boys could n't .") == (
        "it's so laddish, only teenage boys couldn't."
    )
    assert all(" ," not in text and " ." not in text for _, text in reviews)
    pos = E.corpus_sentences("reviews", {"split": "all", "label": "pos"})
    assert 0 < len(pos) < 200 and set(pos) < set(E.corpus_sentences("reviews", {"split": "all"}))


def test_mix_honours_the_weights_and_is_deterministic():
    options = {"news": "3", "reviews": "1", "split": "all"}
    mixed = E.mix_sentences(options)
    news = set(E.corpus_sentences("news", {"split": "all"}))
    reviews = set(E.corpus_sentences("reviews", {"split": "all"}))
    # By default the scarcest corpus sets the size: all 200 reviews, 600 news sentences.
    assert len(mixed) == 800 and len(set(mixed)) == 800
    assert sum(s in reviews for s in mixed) == 200 and sum(s in news for s in mixed) == 600
    assert E.mix_sentences(options) == mixed
    assert E.mix_sentences({**options, "seed": "1"}) != mixed
    # An explicit size splits by weight, repeating a corpus smaller than its share.
    sized = E.mix_sentences({"news": "0.5", "reviews": "0.5", "split": "all", "size": "1000"})
    assert len(sized) == 1000 and sum(s in reviews for s in sized) == 500
    assert len({s for s in sized if s in reviews}) == 200  # every review, some twice


def test_mix_passes_options_to_one_corpus():
    base = {"pydoc": "1", "news": "1", "news.split": "all", "split": "heldout"}
    plain = E.mix_sentences(base)
    windows = E.mix_sentences({**base, "pydoc.windows": "2"})
    held_pydoc = set(T.pydoc_sentences("heldout"))
    # news.split=all overrides the shared split for news only; pydoc stays held out.
    assert sum(s in held_pydoc for s in plain) == len(held_pydoc)
    assert len(windows) > len(plain)  # pydoc's pool grew by its word windows
    assert not set(plain) & set(T.pydoc_sentences("train"))


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("builtin:news?splt=train", "'splt'"),
        ("builtin:news?split=test", "'test'"),
        ("builtin:news?heldout=1.5", "heldout"),
        ("builtin:news?heldout=lots", "heldout"),
        ("builtin:reviews?label=happy", "'happy'"),
        ("builtin:wordnet?kind=synonyms", "'synonyms'"),
        ("builtin:mix?news=1&foo=2", "'foo'"),
        ("builtin:mix?news=heavy", "'heavy'"),
        ("builtin:mix?news=0", "weight of 'news'"),
        ("builtin:mix?split=train", "names no corpus"),
        ("builtin:mix?news=1&reviews.label=pos", "reviews"),
        ("builtin:mix?news=1&news.bogus=1", "'bogus'"),
        ("builtin:mix?news=1&nows.split=all", "'nows'"),
        ("builtin:mix?news=1&docstrings=1&split=train", "docstrings"),
        ("builtin:mix?news=1&size=0", "size"),
    ],
)
def test_bad_options_are_refused_by_name(source, named):
    ref = parse_source(source)
    with pytest.raises(DataError) as info:
        BUILTINS[ref.target](ref.options, _layout(), _tokenize)
    assert named in str(info.value)


def test_sources_tokenise_through_the_builtins():
    ref = parse_source("builtin:mix?news=0.5&reviews=0.5&split=all&limit=50&max_length=8")
    dataset = BUILTINS[ref.target](ref.options, _layout(), _tokenize)
    assert len(dataset) == 50 and dataset.inputs["input_ids"].shape == (50, 8)
    ref = parse_source("builtin:reviews?split=heldout")
    assert 20 <= len(BUILTINS[ref.target](ref.options, _layout(), _tokenize)) <= 60


def test_a_missing_package_is_a_data_error_with_the_install_hint():
    with pytest.raises(DataError) as info:
        E.package_dir("no_such_corpus_package", "builtin:news")
    assert "compress[text]" in info.value.hint


def test_the_held_out_domains_are_never_training_corpora():
    roles = {d.name: d.role for d in E.DOMAINS}
    assert roles["news"] == "select" and {"reviews", "docstrings"} <= {
        n for n, r in roles.items() if r == "final"
    }
    for domain in E.DOMAINS:  # every domain's source parses (the benchmark reads them)
        assert parse_source(domain.source).target == domain.name
