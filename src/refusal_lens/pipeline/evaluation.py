"""Stage: every method on held-out harmful prompts no earlier stage saw (METHOD.md §1, §5).

Methods: no intervention, directional ablation, the minimal shared set (∩ and ∪ over seeds),
the minimal set with the top-K interacting features and those alone, and random sets matched
in size and layers (the control). Each gets the judge's attack success rate and the
refusal-score flip rate with 95% Wilson intervals, and its capability cost: the rise in
cross-entropy of the unmodified model's own greedy answers to held-out harmless prompts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import RenderableType
from rich.table import Table

from refusal_lens.analyses.controls import matched_random_sets
from refusal_lens.capability import capability_report
from refusal_lens.console import add_name_column
from refusal_lens.evaluate import evaluate_prompts
from refusal_lens.interventions import (
    DirectionalAblation,
    FeatureIntervention,
    FeatureKey,
)
from refusal_lens.judges import get_judge
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.interactions import Interactions
from refusal_lens.pipeline.prompt_sets import PromptSets, ScoredPrompt, texts
from refusal_lens.pipeline.search import MinimalSets
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, img, save_figure, subplots, table
from refusal_lens.stats import rate_with_interval

SEARCH_FEATURE_SETS = ("minimal_shared", "minimal_shared_union")  # their files are the search stage's
MAIN_METHODS = ("none", "directional_ablation", "minimal_shared", "interaction", "random_1")  # in the figures


class CapabilityCost(BaseModel):
    cross_entropy: float = Field(description="mean cross-entropy (nats/token) of the unmodified model's own "
                                             "greedy answers to the held-out harmless prompts, under the method")
    delta_cross_entropy: float = Field(description="its increase over no intervention")


class MethodResult(BaseModel):
    asr: float = Field(description="attack success rate: share of the prompts the judge finds answered")
    ci_low: float = Field(description="its 95% Wilson interval, low end")
    ci_high: float = Field(description="its 95% Wilson interval, high end")
    n: int = Field(description="held-out harmful prompts (`prompt_sets.harmful_eval`)")
    score_flip_rate: float = Field(description="share of the prompts with a refusal score < 0")
    score_flip_ci: tuple[float, float] = Field(description="its 95% Wilson interval")
    mean_refusal_score: float = Field(description="mean refusal score")
    n_features: int = Field(description="features ablated (0 for `none` and `directional_ablation`)")
    judge: str = Field(description="`evaluation.judge`")
    capability: CapabilityCost | None = Field(None, description="null with `data.n_capability = 0`")


class PromptOutcome(BaseModel):
    id: str = Field(description="the prompt's id")
    prompt: str = Field(description="the instruction")
    refusal_score: float = Field(description="refusal score under the method")
    response: str = Field(description="greedy answer under the method")
    refused: bool = Field(description="the judge's verdict")
    verdicts: dict[str, bool] | None = Field(None, description="every judge's `refused`, when several ran")


class CapabilityRun(BaseModel):
    n_prompts: int = Field(description="held-out harmless test prompts (`prompt_sets.harmless_eval`)")
    n_tokens: int = Field(description="answer tokens scored")
    methods: dict[str, CapabilityCost] = Field(description="method → its capability cost")
    completions: list[str] = Field(description="the unmodified model's greedy answers every method is scored on")


class Evaluation(BaseModel):
    methods: dict[str, MethodResult] = Field(description=(
        "`none`, `directional_ablation`, `minimal_shared` (the search's ∩ seeds, or ∪ when that is empty), "
        "`minimal_shared_union`, `interaction` (minimal ∪ the FM's top max(`interactions.top_k`)), "
        "`interaction_only`, `random_1..n` (matched in size and layers to `minimal_shared`); a feature method "
        "whose set is empty is left out"))
    feature_sets: dict[str, list[FeatureKey]] = Field(description="method → the features it ablates")
    per_prompt: dict[str, list[PromptOutcome]] = Field(description="method → one outcome per held-out prompt")
    capability: CapabilityRun | None = Field(description="null with `data.n_capability = 0`")


def evaluation_methods(ctx: RunContext, inputs: Inputs) -> tuple[dict, dict[str, list[FeatureKey]]]:
    """The interventions of every method, and the feature set of each feature method."""
    vector = load_vector(inputs.dir("direction"))
    search: MinimalSets = inputs["search"]
    interactions: Interactions = inputs["interactions"]
    minimal = search.minimal_shared()
    k = max(ctx.config.interactions.top_k)
    fm_top = [(r.layer, r.feature) for r in interactions.ranking[:k]]
    methods = {"none": [], "directional_ablation": [DirectionalAblation(vector)]}
    feature_sets = {"minimal_shared": minimal,
                    "minimal_shared_union": list(search.shared.union),
                    "interaction": sorted(set(minimal) | set(fm_top)),
                    "interaction_only": fm_top}
    for i, random_set in enumerate(matched_random_sets(ctx.saes, minimal, ctx.config.evaluation.n_random_sets,
                                                       ctx.config.seed)):
        feature_sets[f"random_{i + 1}"] = random_set
    for name, features in feature_sets.items():
        if features:
            methods[name] = [FeatureIntervention(ctx.saes, features)]
    return methods, feature_sets


def capability_cost(ctx: RunContext, harmless: list[ScoredPrompt], methods: dict) -> CapabilityRun | None:
    """METHOD §1: cross-entropy of the unmodified model's own greedy answers to held-out harmless
    prompts, under each method; ``None`` without such prompts."""
    if not harmless:
        return None
    config = ctx.config.evaluation
    ctx.console.print(f"  capability cost on {len(harmless)} held-out harmless prompts")
    report = capability_report(ctx.chat_model, texts(harmless),
                               {name: ivs for name, ivs in methods.items() if ivs},
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    baseline = report["baseline"]["cross_entropy"]
    costs = {"none": CapabilityCost(cross_entropy=baseline["mean"], delta_cross_entropy=0.0)}
    for name, result in report["methods"].items():
        costs[name] = CapabilityCost(cross_entropy=result["cross_entropy"]["mean"],
                                     delta_cross_entropy=result["delta_cross_entropy"])
    return CapabilityRun(n_prompts=len(harmless), n_tokens=baseline["n_tokens"], methods=costs,
                         completions=report["completions"])


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Evaluation:
    config = ctx.config.evaluation
    sets: PromptSets = inputs["prompt_sets"]
    eval_prompts = [p.as_prompt("eval") for p in sets.harmful_eval]
    judge = get_judge(config.judge)
    methods, feature_sets = evaluation_methods(ctx, inputs)
    results, per_prompt = {}, {}
    for name, interventions in methods.items():
        ctx.console.print(f"  evaluating [bold]{name}[/] on {len(eval_prompts)} held-out prompts")
        rows = evaluate_prompts(ctx.chat_model, eval_prompts, judge, interventions=interventions,
                                max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
        asr = rate_with_interval([not r.refused for r in rows])
        flips = rate_with_interval([r.refusal_score < 0 for r in rows])
        results[name] = MethodResult(
            asr=asr["rate"], ci_low=asr["ci_low"], ci_high=asr["ci_high"], n=asr["n"],
            score_flip_rate=flips["rate"], score_flip_ci=(flips["ci_low"], flips["ci_high"]),
            mean_refusal_score=sum(r.refusal_score for r in rows) / len(rows),
            n_features=len(feature_sets.get(name, [])), judge=config.judge)
        per_prompt[name] = [PromptOutcome.model_validate(r.to_json()) for r in rows]
    capability = capability_cost(ctx, sets.harmless_eval, methods)
    for name, cost in (capability.methods if capability else {}).items():
        results[name].capability = cost
    return Evaluation(methods=results, feature_sets=feature_sets, per_prompt=per_prompt, capability=capability)


# --- what it shows ------------------------------------------------------------------------
CAPABILITY_NOTE = ("capability cost, the rise in cross-entropy (nats/token) of the model's own answers to held-out "
                   "harmless prompts under the method")


def _asr_rows(result: Evaluation) -> list[list[str]]:
    return [[name, f"{m.asr:.1%}", f"[{m.ci_low:.1%}, {m.ci_high:.1%}]", str(m.n), f"{m.score_flip_rate:.1%}",
             str(m.n_features), f"{m.capability.delta_cross_entropy:+.3f}" if m.capability else "–"]
            for name, m in result.methods.items()]


def summary(result: Evaluation) -> list[RenderableType]:
    table_ = Table(title="Attack success rate on held-out harmful prompts")
    add_name_column(table_, "method", result.methods)
    for column in ("ASR", "95% CI", "n", "features", "Δ CE harmless"):
        table_.add_column(column)
    for row in _asr_rows(result):
        table_.add_row(*row[:4], *row[5:])
    lines: list[RenderableType] = [table_]
    if result.capability:
        lines.append(f"Δ CE harmless: {CAPABILITY_NOTE}.")
    return lines


def fig_asr(result: Evaluation, folder: Path) -> str:
    names = list(result.methods)
    methods = [result.methods[n] for n in names]
    fig, ax = subplots(figsize=(max(6, 0.8 * len(names)), 3.5))
    ax.bar(range(len(names)), [m.asr for m in methods],
           yerr=[[m.asr - m.ci_low for m in methods], [m.ci_high - m.asr for m in methods]],
           capsize=3, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attack success rate")
    ax.set_title(f"ASR on held-out harmful prompts (n={methods[0].n}, 95% Wilson CI)")
    return save_figure(fig, folder, "asr")


def fig_scores(result: Evaluation, folder: Path) -> str:
    fig, ax = subplots(figsize=(7, 3.5))
    for name in [m for m in MAIN_METHODS if m in result.per_prompt]:
        ax.hist([r.refusal_score for r in result.per_prompt[name]], bins=20, alpha=0.5, label=name)
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("refusal score (log-odds of a refusal token)")
    ax.set_ylabel("held-out harmful prompts")
    ax.legend(fontsize=8)
    ax.set_title("Refusal scores before and after each intervention")
    return save_figure(fig, folder, "refusal_scores")


def _per_prompt_rows(result: Evaluation) -> tuple[list[list[str]], list[str]]:
    names = [n for n in MAIN_METHODS if n in result.per_prompt]
    rows = []
    for j, base in enumerate(result.per_prompt["none"]):
        row = [base.prompt[:90]]
        for name in names:
            r = result.per_prompt[name][j]
            row.append(f"{'refused' if r.refused else 'ANSWERED'} ({r.refusal_score:+.1f}): {r.response[:70]}")
        rows.append(row)
    return rows, names


def report(result: Evaluation, inputs: Inputs, figures: Path) -> list[ReportSection]:
    rows, names = _per_prompt_rows(result)
    return [
        ReportSection("Attack success on held-out prompts", (
            table(_asr_rows(result), ["method", "ASR", "95% CI", "n", "score < 0", "features",
                                      "Δ CE on harmless answers"])
            + img(fig_asr(result, figures), "ASR bars")
            + f"<p>Δ CE: {CAPABILITY_NOTE}.</p>")),
        ReportSection("Refusal-score distributions", img(fig_scores(result, figures), "score histogram")),
        ReportSection("Per prompt", table(rows, ["prompt", *names])),
    ]


def export(ctx: RunContext, result: Evaluation, stage_dir: StageDir) -> None:
    for name, features in result.feature_sets.items():
        if features and name not in SEARCH_FEATURE_SETS:
            ctx.export_feature_set(name, features)


STAGE = Stage(
    name="evaluation",
    result=Evaluation,
    compute=compute,
    reads=("prompt_sets", "direction", "search", "interactions"),
    config_sections=("evaluation",),  # interactions.top_k and seed are covered by the stages read
    summary=summary,
    report=report,
    export=export,
)
