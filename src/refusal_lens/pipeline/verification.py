"""Stage: do the minimal sets jailbreak? Greedy answers of the search prompts under each set, judged.

The search only watches refusal scores (one forward pass); this checks the answers
themselves: the shared set (intersection and union over seeds) on every search prompt, and
each prompt's own set on that prompt, with the substring judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from refusal_lens.generation import DEFAULT_BATCH as GENERATION_BATCH
from refusal_lens.generation import generate, generate_batch
from refusal_lens.interventions import FeatureIntervention, FeatureKey
from refusal_lens.judges import get_judge
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.search import MinimalSets
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, percent

JUDGE = "substring"


class PromptVerification(BaseModel):
    jailbroken: bool = Field(description="the judge found no refusal in the answer under the prompt's own set")
    response: str = Field(description="the greedy answer")


class Verification(BaseModel):
    judge: str = Field(description="the judge of the answers")
    n_prompts: int = Field(description="search prompts (`prompt_sets.harmful_search`)")
    shared_intersection_jailbreak_rate: float | None = Field(
        description="share of the search prompts answered with the shared set (∩ seeds) ablated; null when "
                    "that set is empty")
    shared_union_jailbreak_rate: float | None = Field(
        description="the same with the union over seeds; null when empty")
    per_prompt_jailbreak_rate: float | None = Field(
        description="share of the prompts with an own set (∩ seeds) that it jailbreaks; null when none has one")
    per_prompt: dict[str, PromptVerification] = Field(description="prompt id → its answer under its own set")


def generate_with_own_sets(ctx: RunContext, instructions: list[str], feature_sets: Sequence) -> list[str]:
    """Greedy answers, each prompt with its own ablation set (one feature set per batch row)."""
    max_new_tokens = ctx.config.evaluation.max_new_tokens
    items = [(text, [[int(L), int(i)] for L, i in features]) for text, features in zip(instructions, feature_sets)]

    def answer(chunk: list[tuple[str, list]]) -> list[str]:
        sets = [[(L, i) for L, i in features] for _, features in chunk]
        return generate_batch(ctx.chat_model, [text for text, _ in chunk], max_new_tokens=max_new_tokens,
                              interventions=[FeatureIntervention.for_rows(ctx.saes, sets)])

    return run_batched(ctx.chat_model, "generate_own_sets", items, answer, batch_size=ctx.config.evaluation.batch_size,
                       default=GENERATION_BATCH,
                       tokens=lambda part: longest_prompt(ctx.chat_model, [t for t, _ in part], max_new_tokens))


def _jailbreak_rate(ctx: RunContext, instructions: list[str], features: list[FeatureKey], name: str) -> float | None:
    if not features:
        return None
    answers = generate(ctx.chat_model, instructions, max_new_tokens=ctx.config.evaluation.max_new_tokens,
                       batch_size=ctx.config.evaluation.batch_size,
                       interventions=[FeatureIntervention(ctx.saes, features)], progress=f"verifying {name}")
    verdicts = get_judge(JUDGE).judge(instructions, answers)
    return sum(not v.refused for v in verdicts) / len(verdicts)


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Verification:
    sets: PromptSets = inputs["prompt_sets"]
    search: MinimalSets = inputs["search"]
    prompts = sets.harmful_search
    instructions = texts(prompts)
    intersection = _jailbreak_rate(ctx, instructions, search.shared.intersection, "shared_intersection")
    union = _jailbreak_rate(ctx, instructions, search.shared.union, "shared_union")
    own = [(p, search.per_prompt[p.id].intersection) for p in prompts
           if p.id in search.per_prompt and search.per_prompt[p.id].intersection]
    answers = generate_with_own_sets(ctx, [p.text for p, _ in own], [f for _, f in own])
    verdicts = get_judge(JUDGE).judge([p.text for p, _ in own], answers) if own else []
    per_prompt = {p.id: PromptVerification(jailbroken=not v.refused, response=a)
                  for (p, _), a, v in zip(own, answers, verdicts)}
    return Verification(judge=JUDGE, n_prompts=len(prompts), shared_intersection_jailbreak_rate=intersection,
                        shared_union_jailbreak_rate=union,
                        per_prompt_jailbreak_rate=(sum(not v.refused for v in verdicts) / len(verdicts)
                                                   if verdicts else None),
                        per_prompt=per_prompt)


def _rates(result: Verification) -> str:
    return (f"shared set (∩ seeds) {percent(result.shared_intersection_jailbreak_rate)}, "
            f"(∪ seeds) {percent(result.shared_union_jailbreak_rate)}; each prompt's own set "
            f"{percent(result.per_prompt_jailbreak_rate)} of {len(result.per_prompt)}")


def summary(result: Verification) -> list[str]:
    return [f"Jailbroken search prompts ({result.judge} judge, greedy answers): {_rates(result)}"]


def report(result: Verification, inputs: Inputs, figures: Path) -> list[ReportSection]:
    return [ReportSection("Verification", (
        f"<p>Share of the {result.n_prompts} search prompts answered (greedy generation, {result.judge} judge) "
        f"with the minimal set ablated: {_rates(result)}.</p>"))]


STAGE = Stage(
    name="verification",
    result=Verification,
    compute=compute,
    reads=("prompt_sets", "search"),
    config_sections=("evaluation",),  # max_new_tokens and batch_size of the generation
    summary=summary,
    report=report,
)
