"""De-duplication across prompt sets, and the check that evaluation never sees discovery prompts.

Two prompts are the same when their *normalised* texts are equal: Unicode NFKC, curly quotes
made straight, lower case, whitespace collapsed, trailing punctuation dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from refusal_lens.data.errors import DataError
from refusal_lens.data.prompts import Prompt

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u02bc": "'"})
_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.!?;:,]+$")


def normalise_text(text: str) -> str:
    """The key two prompts are compared by."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return _TRAILING.sub("", _SPACE.sub(" ", text).strip())


def deduplicate(*prompt_sets: Iterable[Prompt]) -> list[Prompt]:
    """All prompts of the sets, in order, keeping the first of each normalised text."""
    seen: set[str] = set()
    kept: list[Prompt] = []
    for prompts in prompt_sets:
        for p in prompts:
            key = normalise_text(p.text)
            if key not in seen:
                seen.add(key)
                kept.append(p)
    return kept


def find_duplicates(*prompt_sets: Iterable[Prompt]) -> list[tuple[Prompt, Prompt]]:
    """``(first, later)`` pairs of prompts with the same normalised text."""
    first: dict[str, Prompt] = {}
    pairs = []
    for prompts in prompt_sets:
        for p in prompts:
            key = normalise_text(p.text)
            if key in first:
                pairs.append((first[key], p))
            else:
                first[key] = p
    return pairs


class LeakageError(DataError):
    """Evaluation prompts overlap the prompts a result was discovered on."""


def check_disjoint(discovery: Sequence[Prompt], evaluation: Sequence[Prompt], *,
                   what: str = "evaluation") -> None:
    """Raise :class:`LeakageError` if an evaluation prompt is also a discovery prompt.

    Compared by id and by normalised text (the same request in two sets counts). Every
    pipeline calls this before it evaluates anything found on ``discovery``.
    """
    ids = {p.id for p in discovery}
    texts = {normalise_text(p.text): p for p in discovery}
    clashes = []
    for p in evaluation:
        if p.id in ids:
            clashes.append(f"{p.id} (same id)")
        elif normalise_text(p.text) in texts:
            clashes.append(f"{p.id} = {texts[normalise_text(p.text)].id} (same text)")
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; ... {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise LeakageError(
            f"{len(clashes)} of {len(evaluation)} {what} prompts are also discovery prompts: {shown}. "
            f"Evaluate on the test split (--split test) of a set whose discovery uses train/val, "
            f"or on another data set; `refusal_lens.data.deduplicate` removes repeats across sets.")


_WORD = re.compile(r"[a-z]+")
_STOPWORDS = frozenset(
    "the a an and or but of to in on at for with by from as is are was were be been being it its this that these "
    "those what which who whom how why when where do does did done can could would should will shall may might "
    "must i me my we our you your he his she her they them their there here into about than then so if not no "
    "any some all more most such only very just also have has had having people past future someone".split())


_SUFFIX = re.compile(r"(ing|ed|es|s|e)$")


def content_words(text: str) -> frozenset[str]:
    """Lower-case words of three letters or more, stopwords (and the words a tense rephrasing adds:
    "people", "past", "future") left out, crudely stemmed ("making", "make" → "mak"; "bombs" → "bomb")."""
    words = [w for w in _WORD.findall(normalise_text(text)) if len(w) >= 3 and w not in _STOPWORDS]
    return frozenset(_SUFFIX.sub("", w) if len(w) > 3 else w for w in words)


def near_duplicates(prompts: Sequence[Prompt], against: Sequence[Prompt], threshold: float = 0.34) -> list[Prompt]:
    """The prompts whose content words overlap some prompt of ``against`` by a Jaccard index of at
    least ``threshold``: a rephrasing of a request (another tense, a wrapper) keeps most of its
    content words, so this finds the rephrasings an exact-text check lets through."""
    reference = [content_words(p.text) for p in against]
    near = []
    for p in prompts:
        words = content_words(p.text)
        if words and any(len(words & other) / len(words | other) >= threshold for other in reference if other):
            near.append(p)
    return near
