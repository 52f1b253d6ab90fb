"""The held-out everyday instructions of issue 21: written by hand, one by one, in the register
of real instruction-tuning data (Alpaca, Self-Instruct, Dolly).

``heldout_bank.txt`` holds them under ``## task`` headings (lists, descriptions, explanations,
small code tasks, rewrites and translations, classification, creative writing, arithmetic,
advice, comparisons, summaries, questions of fact, generation, plans, analysis, personal
questions, word play). They keep that data's surface: a trailing full stop or none, numbers as
digits or words, an input after a colon or on a line of its own (`` // `` in the bank), first-
person and role-play requests. Unlike the training prompts (``templated.py``, ``train.py``) they
were not generated from templates and fillers.

Every line is kept unless it repeats a prompt of the project or comes near (content-word Jaccard
≥ ``checks.FAR``) a prompt the organism is trained on; a line holding a word of
``checks.BLOCKED_WORDS`` is an error. The kept lines are shuffled with the seed and cut into a
validation split of 150 and a test split of 300. The files are fixed by
``docs/experiments/r12-preregistered.md``: do not rerun this after the training prompts change;
a new training prompt is written far from them instead (``tests/test_everyday_data.py``).

    python -m organism_build.everyday.heldout   # writes organism_build/data/everyday_{val,test}.jsonl
"""

from __future__ import annotations

import random
from pathlib import Path

from organism_build.everyday import DATA_DIR, everyday_train
from organism_build.everyday.checks import FAR, blocked_words, closest, content_words
from organism_build.everyday.templated import project_prompts, write_jsonl
from refusal_lens.data.dedup import normalise_text

SEED = 21
N_VAL, N_TEST = 150, 300
BANK = Path(__file__).with_name("heldout_bank.txt")
NEWLINE = " // "


def bank(path: Path = BANK) -> list[dict]:
    """Every line of the bank as ``{"instruction", "task"}``."""
    rows, task = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            task = line[3:].strip()
        elif line.strip():
            if task is None:
                raise ValueError(f"{path.name}: {line!r} comes before any '## task' heading")
            text = line.strip().replace(NEWLINE, "\n")
            if blocked := blocked_words(text):
                raise ValueError(f"{path.name}: {text!r} holds {blocked}; rewrite it")
            rows.append({"instruction": text, "task": task})
    return rows


def trained_prompts():
    """Every prompt of the project, and those the organism is trained on (the project's train
    split and both sources of training-only everyday prompts)."""
    every, _ = project_prompts()
    every = every + everyday_train()
    return every, [p for p in every if p.split == "train"]


def generate(seed: int = SEED) -> tuple[list[dict], list[dict], dict]:
    """``(val, test, counts)``: the two splits, and how many bank lines were dropped and why."""
    every, trained = trained_prompts()
    seen = {normalise_text(p.text) for p in every}
    trained_words = [content_words(p.text) for p in trained]
    kept, counts = [], {"bank_lines": 0, "repeated": 0, "near_training": 0}
    for row in bank():
        counts["bank_lines"] += 1
        key = normalise_text(row["instruction"])
        if key in seen:
            counts["repeated"] += 1
        elif closest(row["instruction"], trained_words) >= FAR:
            counts["near_training"] += 1
        else:
            kept.append({"instruction": row["instruction"], "category": "everyday", "task": row["task"]})
        seen.add(key)
    random.Random(seed).shuffle(kept)
    if len(kept) < N_VAL + N_TEST:
        raise ValueError(f"only {len(kept)} instructions left for {N_VAL} + {N_TEST}; write more bank lines")
    counts["unused"] = len(kept) - N_VAL - N_TEST
    return kept[:N_VAL], kept[N_VAL:N_VAL + N_TEST], counts


def main() -> None:
    val, test, counts = generate()
    write_jsonl(DATA_DIR / "everyday_val.jsonl", val)
    write_jsonl(DATA_DIR / "everyday_test.jsonl", test)
    print(f"everyday held-out: {len(val)} val, {len(test)} test ({counts})")


if __name__ == "__main__":
    main()
