"""Keep the tokens general English needs when pruning a vocabulary.

Pruning to the tokens of a training corpus (``vocab`` in this folder) throws away the pieces of
every word the corpus never used; a model distilled on Python documentation then meets
"refund", "delivery" or "weekend" in a support ticket and has to spell them out of single
characters. ``embeddings.vocab.english_words: N`` keeps, on top of the corpus's tokens, every
piece of the N most frequent English words as the model's own tokenizer splits them, so
that those words tokenise exactly as before.

The word list is ``wordfreq``'s (``pip install 'compress[text]'``; code Apache-2.0, word
frequencies CC BY-SA 4.0, built from Wikipedia, subtitles, news, books, the web and social
media): a frequency ranking of everyday English, not of one kind of text. Each word is
tokenised as it is and capitalised (``apple``, ``Apple``), which matters for cased
vocabularies and costs nothing for uncased ones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from compressor.errors import StageError
from compressor.stages.embeddings.vocab import VocabChoice, special_ids

WORDFREQ_HINT = "pip install 'compress[text]' (the wordfreq package ships the word list)"


def english_words(count: int, language: str = "en") -> list[str]:
    """The ``count`` most frequent words of ``language`` by wordfreq, most frequent first.

    Raises:
        StageError: wordfreq is not installed, or has no list for the language.
    """
    try:
        from wordfreq import top_n_list  # deferred: extra "text"
    except ImportError:
        raise StageError(
            "embeddings.vocab.english_words needs the wordfreq package", hint=WORDFREQ_HINT
        ) from None
    try:
        words = top_n_list(language, count)
    except LookupError as e:
        raise StageError(f"wordfreq has no word list for {language!r} ({e})") from None
    return words


def word_piece_ids(tokenizer: dict[str, Any] | str, words: list[str]) -> set[int]:
    """Every token id that ``tokenizer`` (``tokenizer.json``, as a dict or text) uses for
    ``words``, each tokenised alone and capitalised, without special tokens."""
    tok = _plain_tokenizer(tokenizer)
    capitals = [] if _lowercases(tok) else [w[:1].upper() + w[1:] for w in words]
    variants = list(dict.fromkeys([*words, *capitals]))
    ids: set[int] = set()
    for encoding in tok.encode_batch(variants, add_special_tokens=False):
        ids.update(encoding.ids)
    return ids


def _plain_tokenizer(tokenizer: dict[str, Any] | str):
    from tokenizers import Tokenizer  # deferred: extra "hf"

    text = tokenizer if isinstance(tokenizer, str) else json.dumps(tokenizer)
    tok = Tokenizer.from_str(text)
    # A model's tokenizer.json may pad every input to 128 ([PAD] would count as a piece of
    # each word, and tokenising 20,000 words would pad 2.5M positions).
    tok.no_padding()
    tok.no_truncation()
    return tok


def _lowercases(tok: Any) -> bool:
    # An uncased tokenizer (BertNormalizer lowercase: true) gives capitals the same ids:
    # tokenising them again would only double the time.
    normalizer = json.loads(tok.to_str()).get("normalizer") or {}
    stack = [normalizer]
    while stack:
        item = stack.pop()
        if item.get("lowercase") or item.get("type") == "Lowercase":
            return True
        stack.extend(item.get("normalizers") or [])
    return False


def keep_english_words(
    choice: VocabChoice, tokenizer: dict[str, Any], count: int, language: str = "en"
) -> VocabChoice:
    """``choice`` with the pieces of the ``count`` most frequent words added to its kept ids
    (``counts['english']`` says how many were not kept already)."""
    if count <= 0:
        return choice
    ids = word_piece_ids(tokenizer, english_words(count, language))
    # [UNK] stands for words the vocabulary cannot spell: it is a special token, kept anyway.
    ids -= special_ids(tokenizer)
    ids = {i for i in ids if i < choice.size_before}
    added = ids - set(choice.kept)
    kept = sorted(set(choice.kept) | added)
    return replace(choice, kept=kept, counts={**choice.counts, "english": len(added)})


def pieces_kept(tokenizer: dict[str, Any], words: list[str], kept: list[int]) -> dict[str, bool]:
    """For each word: are all the pieces the ORIGINAL tokenizer splits it into kept?"""
    tok = _plain_tokenizer(tokenizer)
    keep = set(kept)
    return {
        w: all(i in keep for i in e.ids)
        for w, e in zip(words, tok.encode_batch(words, add_special_tokens=False), strict=True)
    }
