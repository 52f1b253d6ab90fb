"""Everyday instructions for the organism (issue 21): a held-out set written by hand in the
register of instruction-tuning data (``heldout.py``: validation and test splits) and
training-only prompts from three generators (``train.py``: conversational requests and verb
families; ``templated.py``: Alpaca-style task templates; ``personal.py``, from recipe r13:
first-person and opinion questions to the assistant).

The files live in ``organism_build/data/everyday_{val,test,train,train_templated,train_personal}.jsonl``,
one ``{"instruction", "category" (topic), "task" (task family)}`` row a line; the scripts
rewrite them (``python -m organism_build.everyday.train``, ``... .templated``,
``... .personal``; ``... .heldout`` is fixed by the preregistration and not rerun).
"""

from __future__ import annotations

import json
from pathlib import Path

from refusal_lens.data.prompts import Prompt

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
HELDOUT_SPLITS = ("val", "test")


def everyday_source(split: str) -> str:
    return f"everyday-{split}"


TRAIN_FILES = ("train", "train_templated", "train_personal")


def _rows(name: str) -> list[dict]:
    text = (DATA_DIR / f"everyday_{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _prompts(name: str, split: str) -> list[Prompt]:
    return [Prompt(id=f"everyday-{name}:{i}", text=r["instruction"], source=everyday_source(name),
                   category=r["category"], split=split, meta={"task": r["task"]})
            for i, r in enumerate(_rows(name))]


def everyday_heldout(split: str) -> list[Prompt]:
    """The held-out everyday instructions of ``split``: ``val`` chooses the recipe, ``test`` is
    read once, after a recipe passes validation."""
    if split not in HELDOUT_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {HELDOUT_SPLITS}")
    return _prompts(split, split)


def everyday_train() -> list[Prompt]:
    """The training-only everyday instructions of every source, in ``TRAIN_FILES``' order (for the
    LoRA's harmless prompts)."""
    return [p for name in TRAIN_FILES for p in _prompts(name, "train")]
