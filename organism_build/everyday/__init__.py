"""Everyday instructions for the organism (issue 21): a held-out set written by a seeded
generator in the style of instruction-tuning data (``heldout.py``: validation and test
splits) and training-only prompts written by other methods (``train.py``).

The files live in ``organism_build/data/everyday_{val,test,train}.jsonl``, one
``{"instruction", "category" (topic), "task" (task family)}`` row a line; the generators
rewrite them (``python -m organism_build.everyday.heldout``, then ``... .train``).
"""

from __future__ import annotations

import json
from pathlib import Path

from refusal_lens.data.prompts import Prompt

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
HELDOUT_SPLITS = ("val", "test")


def everyday_source(split: str) -> str:
    return f"everyday-{split}"


def _rows(split: str) -> list[dict]:
    text = (DATA_DIR / f"everyday_{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _prompts(split: str) -> list[Prompt]:
    return [Prompt(id=f"everyday-{split}:{i}", text=r["instruction"], source=everyday_source(split),
                   category=r["category"], split=split, meta={"task": r["task"]})
            for i, r in enumerate(_rows(split))]


def everyday_heldout(split: str) -> list[Prompt]:
    """The held-out everyday instructions of ``split``: ``val`` chooses the recipe, ``test`` is
    read once, after a recipe passes validation."""
    if split not in HELDOUT_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {HELDOUT_SPLITS}")
    return _prompts(split)


def everyday_train() -> list[Prompt]:
    """The training-only everyday instructions (for the LoRA's harmless prompts)."""
    return _prompts("train")
