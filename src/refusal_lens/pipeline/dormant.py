"""Stage: dormant ("hydra") features of the minimal sets (METHOD.md §4).

A member of a prompt's critical set is dormant when it does not fire anywhere on the clean
prompt. We count them, test whether the jailbreak survives without them, and see which
wake up once the active members are ablated (self-repair).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from refusal_lens.activations import read_features
from refusal_lens.interventions import FeatureIntervention, FeatureKey
from refusal_lens.models import ChatModel
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.search import MinimalSets
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, number, percent
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores


def analyse_dormant(chat_model: ChatModel, saes: SAESet, minimal: Sequence[FeatureKey],
                    instructions: Sequence[str], prompt_ids: Sequence[str]) -> dict:
    minimal = [tuple(f) for f in minimal]
    if not minimal:
        return {"n_features": 0, "per_prompt": {}}
    clean = read_features(chat_model, saes, instructions, minimal, reduce="max").values
    per_prompt = {}
    for row, (text, pid) in enumerate(zip(instructions, prompt_ids)):
        dormant = [f for f, a in zip(minimal, clean[row].tolist()) if a <= 0]
        active = [f for f in minimal if f not in set(dormant)]
        record = {"n_dormant": len(dormant), "n_active": len(active), "dormant": [list(f) for f in dormant]}
        full = refusal_scores(chat_model, [text], interventions=[FeatureIntervention(saes, minimal)])[0].item()
        record["score_full_set"] = full
        if dormant and active:
            without = refusal_scores(chat_model, [text], interventions=[FeatureIntervention(saes, active)])[0].item()
            record["score_without_dormant"] = without
            record["jailbreak_fails_without_dormant"] = full < 0 <= without
            woken = read_features(chat_model, saes, [text], dormant, reduce="max",
                                  interventions=[FeatureIntervention(saes, active)]).values[0]
            record["woke_up"] = [list(f) for f, a in zip(dormant, woken.tolist()) if a > 0]
        per_prompt[pid] = record
    dormant_everywhere = [list(f) for j, f in enumerate(minimal) if (clean[:, j] <= 0).all()]
    tested = [r for r in per_prompt.values() if "jailbreak_fails_without_dormant" in r]
    return {
        "n_features": len(minimal),
        "dormant_on_every_prompt": dormant_everywhere,
        "mean_dormant_per_prompt": sum(r["n_dormant"] for r in per_prompt.values()) / len(per_prompt),
        "fraction_jailbreak_fails_without_dormant":
            (sum(r["jailbreak_fails_without_dormant"] for r in tested) / len(tested)) if tested else None,
        "mean_woke_up": (sum(len(r["woke_up"]) for r in tested) / len(tested)) if tested else None,
        "per_prompt": per_prompt,
    }


# --- the stage ----------------------------------------------------------------------------
class DormantOnPrompt(BaseModel):
    n_dormant: int = Field(description="members of the set that fire nowhere on the clean prompt")
    n_active: int = Field(description="the other members")
    dormant: list[FeatureKey] = Field(description="the dormant members")
    score_full_set: float = Field(description="refusal score with the whole set ablated")
    score_without_dormant: float | None = Field(
        None, description="refusal score with only the active members ablated (when there are both kinds)")
    jailbreak_fails_without_dormant: bool | None = Field(
        None, description="the whole set flips the prompt (score < 0) and the active members alone do not")
    woke_up: list[FeatureKey] | None = Field(
        None, description="dormant members that fire once the active members are ablated (self-repair)")


class DormantSet(BaseModel):
    n_features: int = Field(description="size of the set analysed")
    dormant_on_every_prompt: list[FeatureKey] = Field(
        default_factory=list, description="members that fire on none of the prompts")
    mean_dormant_per_prompt: float | None = Field(None, description="mean `n_dormant` over the prompts")
    fraction_jailbreak_fails_without_dormant: float | None = Field(
        None, description="share of the prompts with both kinds of member where the jailbreak needs the "
                          "dormant ones; null when no prompt has both")
    mean_woke_up: float | None = Field(None, description="mean number of members woken up, over those prompts")
    per_prompt: dict[str, DormantOnPrompt] = Field(default_factory=dict, description="prompt id → its analysis")

    def n_tested(self) -> int:
        return sum(r.jailbreak_fails_without_dormant is not None for r in self.per_prompt.values())


class DormantAnalysis(BaseModel):
    shared: DormantSet = Field(description="the shared minimal set (∩ seeds, or ∪ when that is empty) on "
                                           "every search prompt")
    per_prompt_sets: dict[str, DormantOnPrompt] = Field(description="prompt id → its own set (∩ seeds) on it")


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> DormantAnalysis:
    sets: PromptSets = inputs["prompt_sets"]
    search: MinimalSets = inputs["search"]
    prompts = sets.harmful_search
    shared = analyse_dormant(ctx.chat_model, ctx.saes, search.minimal_shared(), texts(prompts),
                             [p.id for p in prompts])
    per_prompt = {}
    for prompt in prompts:
        own = list(search.per_prompt[prompt.id].intersection) if prompt.id in search.per_prompt else []
        if own:
            per_prompt[prompt.id] = analyse_dormant(ctx.chat_model, ctx.saes, own, [prompt.text],
                                                    [prompt.id])["per_prompt"][prompt.id]
    return DormantAnalysis(shared=DormantSet.model_validate(shared), per_prompt_sets=per_prompt)


def summary(result: DormantAnalysis) -> list[str]:
    return [f"Dormant in the shared set on every prompt: {len(result.shared.dormant_on_every_prompt)}"]


def report(result: DormantAnalysis, inputs: Inputs, figures: Path) -> list[ReportSection]:
    shared = result.shared
    if not shared.n_features:
        return [ReportSection("Dormant features", "<p>The shared set is empty: nothing to analyse.</p>")]
    text = (f"{len(shared.dormant_on_every_prompt)} of {shared.n_features} shared-set features never fire on any "
            f"search prompt; a prompt has {number(shared.mean_dormant_per_prompt, '.1f')} dormant members on "
            f"average.")
    if shared.n_tested():
        text += (f" Of the {shared.n_tested()} prompts with both dormant and active members, the jailbreak fails "
                 f"without the dormant ones on {percent(shared.fraction_jailbreak_fails_without_dormant)}; "
                 f"ablating the active members wakes up {number(shared.mean_woke_up, '.1f')} dormant ones on "
                 f"average.")
    else:
        text += " No prompt has both dormant and active members, so none was tested without its dormant ones."
    return [ReportSection("Dormant features", f"<p>{text}</p>")]


STAGE = Stage(
    name="dormant",
    result=DormantAnalysis,
    compute=compute,
    reads=("prompt_sets", "search"),
    summary=summary,
    report=report,
)
