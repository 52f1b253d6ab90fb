"""Stage: the prompt sets of a run, scored by the unmodified model.

Discovery uses the train / val splits, the evaluation the test split only; the stage fails
if an evaluation prompt is among the discovery prompts. With ``data.filter_by_score`` the
harmful discovery prompts keep those the model refuses (score > 0) and the harmless ones
those it answers (score < 0) [A24]; the search runs on refused harmful training prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from refusal_lens.data import check_disjoint, deduplicate, load_prompts
from refusal_lens.data.prompts import Prompt
from refusal_lens.pipeline.config import DataConfig
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, table
from refusal_lens.scoring import refusal_scores


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


# --- the stage ----------------------------------------------------------------------------
class ScoredPrompt(BaseModel):
    id: str = Field(description="stable id (source name + index, or the source's own id)")
    text: str = Field(description="the instruction")
    category: str | None = Field(description="harm category, `lookalike`, or null")
    split: str | None = Field(description="`train`, `val` or `test`")
    score: float = Field(description="the unmodified model's refusal score (log-odds of a refusal token)")

    def as_prompt(self, source: str) -> Prompt:
        return Prompt(self.id, self.text, source, self.category, self.split)


class PromptSets(BaseModel):
    """Every prompt of the run, by role; each role a seeded sample of one split."""

    harmful_train: list[ScoredPrompt] = Field(description="train split: the direction's difference of means")
    harmless_train: list[ScoredPrompt] = Field(description="train split: the direction's difference of means")
    harmful_val: list[ScoredPrompt] = Field(description="val split: choosing the direction")
    harmless_val: list[ScoredPrompt] = Field(description="val split: choosing the direction")
    harmful_fm: list[ScoredPrompt] = Field(description="train split (another seed): the factorization machine")
    harmless_fm: list[ScoredPrompt] = Field(description="train split (another seed): the factorization machine")
    harmful_eval: list[ScoredPrompt] = Field(description="test split: the held-out evaluation")
    harmless_eval: list[ScoredPrompt] = Field(description="test split: the capability cost (empty with "
                                                          "`data.n_capability = 0`)")
    harmful_search: list[ScoredPrompt] = Field(description="the first `data.n_search` refused `harmful_train` "
                                                           "prompts: the feature search runs on them")


def texts(prompts: list[ScoredPrompt]) -> list[str]:
    return [p.text for p in prompts]


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> PromptSets:
    config = ctx.config
    runs = assemble(config.data, config.seed)
    chat = ctx.chat_model
    sets = {}
    for name, prompts in runs.__dict__.items():
        scores = refusal_scores(chat, [p.text for p in prompts], batch_size=config.batch_size,
                                progress=f"scoring {name}")
        sets[name] = [ScoredPrompt(id=p.id, text=p.text, category=p.category, split=p.split, score=s)
                      for p, s in zip(prompts, scores.tolist())]
    if config.data.filter_by_score:
        for name in ("harmful_train", "harmful_val", "harmful_fm"):
            sets[name] = [p for p in sets[name] if p.score > 0] or sets[name]
        for name in ("harmless_train", "harmless_val", "harmless_fm"):
            sets[name] = [p for p in sets[name] if p.score < 0] or sets[name]
    sets["harmful_search"] = [p for p in sets["harmful_train"] if p.score > 0][:config.data.n_search]
    if not sets["harmful_search"]:
        raise ValueError("The model refuses none of the harmful training prompts: nothing to search.")
    return PromptSets(**sets)


def report(result: PromptSets, inputs: Inputs, figures: Path) -> list[ReportSection]:
    rows = [[name, len(prompts)] for name, prompts in result]
    return [ReportSection("Prompts", table(rows, ["role", "prompts"]))]


STAGE = Stage(
    name="prompt_sets",
    result=PromptSets,
    compute=compute,
    config_sections=("model", "seed", "data", "batch_size"),
    report=report,
)
