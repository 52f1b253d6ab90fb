"""The prompt sets of a run: discovery (train / val splits) and evaluation (test split), kept apart."""

from __future__ import annotations

import random
from dataclasses import dataclass
from refusal_lens.data import check_disjoint, deduplicate, load_prompts
from refusal_lens.data.prompts import Prompt
from refusal_lens.pipeline.config import DataConfig


@dataclass
class RunPrompts:
    harmful_train: list[Prompt]
    harmless_train: list[Prompt]
    harmful_val: list[Prompt]
    harmless_val: list[Prompt]
    harmful_fm: list[Prompt]
    harmless_fm: list[Prompt]
    harmful_eval: list[Prompt]
    harmless_eval: list[Prompt]  # the capability cost's prompts (test split)

    @property
    def discovery(self) -> list[Prompt]:
        return [*self.harmful_train, *self.harmless_train, *self.harmful_val, *self.harmless_val,
                *self.harmful_fm, *self.harmless_fm]

    def describe(self) -> dict:
        return {name: [p.id for p in value] for name, value in self.__dict__.items()}


def load_sources(names: list[str]) -> list[Prompt]:
    """Registered sets and / or prompt files, de-duplicated across them."""
    return deduplicate([p for name in names for p in load_prompts(name)])


def _sample(prompts: list[Prompt], split: str, n: int, seed: int, exclude: set[str] = frozenset()) -> list[Prompt]:
    pool = [p for p in prompts if p.split == split and p.id not in exclude]
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))


def assemble(config: DataConfig, seed: int) -> RunPrompts:
    """Seeded samples of each split; fails if an evaluation prompt is in a discovery split."""
    harmful = load_sources(config.harmful)
    harmless = load_sources(config.harmless)
    harmful_train = _sample(harmful, "train", config.n_train, seed)
    harmless_train = _sample(harmless, "train", config.n_train, seed)
    runs = RunPrompts(
        harmful_train=harmful_train,
        harmless_train=harmless_train,
        harmful_val=_sample(harmful, "val", config.n_val, seed),
        harmless_val=_sample(harmless, "val", config.n_val, seed),
        harmful_fm=_sample(harmful, "train", config.n_fm, seed + 1),
        harmless_fm=_sample(harmless, "train", config.n_fm, seed + 1),
        harmful_eval=_sample(harmful, "test", config.n_eval, seed),
        harmless_eval=_sample(harmless, "test", config.n_capability, seed),
    )
    for name, value in runs.__dict__.items():
        if not value and not (name == "harmless_eval" and config.n_capability == 0):
            raise ValueError(f"No prompts for {name}: the sets {config.harmful + config.harmless} have "
                             "too few prompts in that split.")
    check_disjoint(runs.discovery, runs.harmful_eval + runs.harmless_eval)
    return runs
