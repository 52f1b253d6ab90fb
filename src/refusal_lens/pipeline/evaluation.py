"""Stage: every method on held-out harmful prompts no earlier stage saw (METHOD.md §1, §5).

Methods: no intervention, directional ablation, the minimal shared set (∩ and ∪ over seeds),
the minimal set with the top-K interacting features and those alone, and random sets matched
in size and layers (the control); the cheap search's set (``search.cost``) and the minimal
set edited where it is needed only (``pipeline/targeted.py``, ``evaluation.targeted``). Each
gets the judge's attack success rate and the refusal-score flip rate with 95% Wilson intervals,
and its capability cost on held-out harmless prompts: the rise in cross-entropy of the
unmodified model's own greedy answers, and the KL divergence of the next-token distribution at
the last prompt position (heretic's damage metric), with the share of prompts whose most likely
next token is unchanged. The report plots every method on one ASR-vs-KL chart.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import RenderableType
from rich.table import Table

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
from refusal_lens.pipeline.targeted import TargetedChoice, file_fields, targeted_methods
from refusal_lens.pipeline.targeted import report_section as targeted_report
from refusal_lens.report import Cell, ReportSection, data, img, save_figure, subplots, table
from refusal_lens.saes import SAESet
from refusal_lens.stats import rate_with_interval

SEARCH_FEATURE_SETS = ("minimal_shared", "minimal_shared_union", "minimal_cheap")  # their files are the search stage's
MAIN_METHODS = ("none", "directional_ablation", "minimal_shared", "interaction", "random_1")  # in the figures


def matched_random_sets(saes: SAESet, reference: Sequence[FeatureKey], n_sets: int, seed: int) -> list[list[FeatureKey]]:
    """``n_sets`` random sets with as many features at each layer as ``reference``, none of its own."""
    per_layer = Counter(layer for layer, _ in reference)
    excluded = {tuple(f) for f in reference}
    sets = []
    for k in range(n_sets):
        rng = random.Random(seed * 1000 + k)
        chosen = []
        for layer, count in sorted(per_layer.items()):
            width = saes[layer].cfg.d_sae
            pool = [i for i in range(width) if (layer, i) not in excluded]
            chosen += [(layer, i) for i in sorted(rng.sample(pool, min(count, len(pool))))]
        sets.append(chosen)
    return sets


class CapabilityCost(BaseModel):
    cross_entropy: float = Field(description="mean cross-entropy (nats/token) of the unmodified model's own "
                                             "greedy answers to the held-out harmless prompts, under the method")
    delta_cross_entropy: float = Field(description="its increase over no intervention")
    kl_mean: float = Field(description="mean over the held-out harmless prompts of KL(unmodified || method) of "
                                       "the next-token distribution at the last prompt position")
    kl_ci: tuple[float, float] = Field(description="its 95% bootstrap interval")
    kl_median: float = Field(description="the median of those KL divergences")
    kl_max: float = Field(description="their maximum")
    top1_unchanged: float = Field(description="share of the harmless prompts whose most likely next token is "
                                              "the unmodified model's")


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
        "`none`, `directional_ablation`, `directional_ablation_A-B` (the direction ablated at blocks A..B only: "
        "the direction stage's `alternatives`, present only when its filters were relaxed), "
        "`minimal_shared` (the search's ∩ seeds, or ∪ when that is empty), "
        "`minimal_shared_union`, `interaction` (minimal ∪ the FM's top max(`interactions.top_k`)), "
        "`interaction_only`, `random_1..n` (matched in size and layers to `minimal_shared`); a feature method "
        "whose set is empty is left out"))
    feature_sets: dict[str, list[FeatureKey]] = Field(description="method → the features it ablates")
    per_prompt: dict[str, list[PromptOutcome]] = Field(description="method → one outcome per held-out prompt")
    capability: CapabilityRun | None = Field(description="null with `data.n_capability = 0`")
    targeted: dict[str, TargetedChoice] = Field(default_factory=dict, description=(
        "targeted method → its positions, condition, factor and thresholds, and the validation scores "
        "they were chosen by (`pipeline/targeted.py`)"))


def evaluation_methods(ctx: RunContext, inputs: Inputs) -> tuple[dict, dict[str, list[FeatureKey]]]:
    """The interventions of every method, and the feature set of each feature method."""
    vector = load_vector(inputs.dir("direction"))
    search: MinimalSets = inputs["search"]
    interactions: Interactions = inputs["interactions"]
    minimal = search.minimal_shared()
    k = max(ctx.config.interactions.top_k)
    fm_top = [(r.layer, r.feature) for r in interactions.ranking[:k]]
    methods = {"none": [], "directional_ablation": [DirectionalAblation(vector)]}
    for alternative in inputs["direction"].alternatives:  # only when the direction's filters were relaxed
        methods[alternative.method] = [DirectionalAblation(vector, layers=alternative.layers)]
    feature_sets = {"minimal_shared": minimal,
                    "minimal_shared_union": list(search.shared.union),
                    "minimal_cheap": search.minimal_cheap(),
                    "interaction": sorted(set(minimal) | set(fm_top)),
                    "interaction_only": fm_top}
    for i, random_set in enumerate(matched_random_sets(ctx.saes, minimal, ctx.config.evaluation.n_random_sets,
                                                       ctx.config.seed)):
        feature_sets[f"random_{i + 1}"] = random_set
    for name, features in feature_sets.items():
        if features:
            methods[name] = [FeatureIntervention(ctx.saes, features)]
    return methods, feature_sets


def add_targeted_methods(ctx: RunContext, inputs: Inputs, methods: dict,
                         feature_sets: dict[str, list[FeatureKey]]) -> dict[str, TargetedChoice]:
    """The minimal shared set edited where it is needed only, added to ``methods``."""
    minimal = feature_sets["minimal_shared"]
    if not ctx.config.evaluation.targeted or not minimal:
        return {}
    targeted = targeted_methods(ctx, inputs["prompt_sets"], load_vector(inputs.dir("direction")), minimal)
    methods.update(targeted.interventions)
    feature_sets.update({name: list(minimal) for name in targeted.interventions})
    return targeted.choices


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
    costs = {"none": CapabilityCost(cross_entropy=baseline["mean"], delta_cross_entropy=0.0, kl_mean=0.0,
                                    kl_ci=(0.0, 0.0), kl_median=0.0, kl_max=0.0, top1_unchanged=1.0)}
    for name, result in report["methods"].items():
        shift = result["next_token"]
        costs[name] = CapabilityCost(cross_entropy=result["cross_entropy"]["mean"],
                                     delta_cross_entropy=result["delta_cross_entropy"], kl_mean=shift["kl_mean"],
                                     kl_ci=tuple(shift["kl_ci"]), kl_median=shift["kl_median"],
                                     kl_max=shift["kl_max"], top1_unchanged=shift["top1_unchanged"])
    return CapabilityRun(n_prompts=len(harmless), n_tokens=baseline["n_tokens"], methods=costs,
                         completions=report["completions"])


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Evaluation:
    config = ctx.config.evaluation
    sets: PromptSets = inputs["prompt_sets"]
    eval_prompts = [p.as_prompt("eval") for p in sets.harmful_eval]
    judge = get_judge(config.judge)
    methods, feature_sets = evaluation_methods(ctx, inputs)
    targeted = add_targeted_methods(ctx, inputs, methods, feature_sets)
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
    return Evaluation(methods=results, feature_sets=feature_sets, per_prompt=per_prompt, capability=capability,
                      targeted=targeted)


# --- what it shows ------------------------------------------------------------------------
CAPABILITY_NOTE = ("capability cost, the rise in cross-entropy (nats/token) of the model's own answers to held-out "
                   "harmless prompts under the method")
KL_NOTE = ("KL: KL(unmodified || method) of the next-token distribution at the last prompt position of the same "
           "held-out harmless prompts (mean [95% bootstrap CI], median, max); top-1 same: share of them whose most "
           "likely next token is unchanged")
TABLE_HEADER = ["method", "ASR", "95% CI", "n", "score < 0", "features", "Δ CE harmless", "KL mean [95% CI]",
                "KL median", "KL max", "top-1 same"]
SUMMARY_COLUMNS = ("ASR", "95% CI", "n", "features", "Δ CE harmless", "KL mean [95% CI]", "top-1 same")


def _cost_cells(cost: CapabilityCost | None) -> list[str]:
    if cost is None:
        return ["–"] * 5
    return [f"{cost.delta_cross_entropy:+.3f}", f"{cost.kl_mean:.3f} [{cost.kl_ci[0]:.3f}, {cost.kl_ci[1]:.3f}]",
            f"{cost.kl_median:.3f}", f"{cost.kl_max:.3f}", f"{cost.top1_unchanged:.0%}"]


def _asr_rows(result: Evaluation) -> list[list[str]]:
    return [[name, f"{m.asr:.1%}", f"[{m.ci_low:.1%}, {m.ci_high:.1%}]", str(m.n), f"{m.score_flip_rate:.1%}",
             str(m.n_features), *_cost_cells(m.capability)]
            for name, m in result.methods.items()]


def summary(result: Evaluation) -> list[RenderableType]:
    table_ = Table(title="Attack success rate on held-out harmful prompts")
    add_name_column(table_, "method", result.methods)
    for column in SUMMARY_COLUMNS:
        table_.add_column(column)
    keep = [TABLE_HEADER.index(c) for c in SUMMARY_COLUMNS]
    for row in _asr_rows(result):
        table_.add_row(row[0], *(row[i] for i in keep))
    lines: list[RenderableType] = [table_]
    if result.capability:
        lines.append(f"Δ CE harmless: {CAPABILITY_NOTE}. {KL_NOTE}.")
    return lines


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The methods no other beats on both counts (lower KL and higher ASR), by increasing KL."""
    front = [name for name, (kl, asr) in points.items()
             if not any((k <= kl and a >= asr) and (k < kl or a > asr) for k, a in points.values())]
    return sorted(front, key=lambda name: points[name])


def fig_pareto(result: Evaluation, folder: Path) -> str | None:
    """ASR against mean KL on harmless prompts, every method, with both intervals; the front joined."""
    costed = {name: m for name, m in result.methods.items() if m.capability}
    if not costed:
        return None
    fig, ax = subplots(figsize=(7.5, 4.5))
    for name, m in costed.items():
        kl = m.capability.kl_mean
        ax.errorbar([kl], [m.asr], xerr=[[kl - m.capability.kl_ci[0]], [m.capability.kl_ci[1] - kl]],
                    yerr=[[m.asr - m.ci_low], [m.ci_high - m.asr]], fmt="o", capsize=3, alpha=0.8)
        ax.annotate(name, (kl, m.asr), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front({name: (m.capability.kl_mean, m.asr) for name, m in costed.items()})
    ax.step([costed[n].capability.kl_mean for n in front], [costed[n].asr for n in front], where="post",
            color="black", lw=1, ls="--", label="Pareto front")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(left=0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("mean KL on held-out harmless prompts (next token, last prompt position; 95% bootstrap CI)")
    ax.set_ylabel("attack success rate (95% Wilson CI)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Refusal removed vs harmless behaviour changed: up and to the left is better", fontsize=10)
    return save_figure(fig, folder, "asr_vs_kl")


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


def _per_prompt_rows(result: Evaluation) -> tuple[list[list[Cell]], list[str]]:
    names = [n for n in MAIN_METHODS if n in result.per_prompt]
    rows = []
    for j, base in enumerate(result.per_prompt["none"]):
        row = [Cell(data(base.prompt[:90]))]
        for name in names:
            r = result.per_prompt[name][j]
            row.append(Cell(f"{'refused' if r.refused else 'ANSWERED'} ({r.refusal_score:+.1f}): "
                            + data(r.response[:70])))
        rows.append(row)
    return rows, names


def report(result: Evaluation, inputs: Inputs, figures: Path) -> list[ReportSection]:
    rows, names = _per_prompt_rows(result)
    return [
        ReportSection("Attack success on held-out prompts", (
            table(_asr_rows(result), TABLE_HEADER)
            + img(fig_asr(result, figures), "ASR bars")
            + f"<p>Δ CE: {CAPABILITY_NOTE}. {KL_NOTE}.</p>")),
        ReportSection("Attack success vs damage on harmless prompts",
                      img(fig_pareto(result, figures), "ASR-vs-KL chart")),
        ReportSection("Refusal-score distributions", img(fig_scores(result, figures), "score histogram")),
        ReportSection("Per prompt", table(rows, ["prompt", *names])),
        *targeted_report(result.targeted),
    ]


def export(ctx: RunContext, result: Evaluation, stage_dir: StageDir) -> None:
    for name, features in result.feature_sets.items():
        if features and name not in SEARCH_FEATURE_SETS:
            ctx.export_feature_set(name, features, **file_fields(result.targeted.get(name)))


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
