"""Stage: every method on held-out harmful prompts no earlier stage saw (METHOD.md §1, §5).

Methods: no intervention, directional ablation, the minimal shared set (∩ and ∪ over seeds),
the minimal set with the top-K interacting features and those alone, and random sets matched
in size and layers (the control); the cheap search's set (``search.cost``, under its edit) and the minimal
set edited where it is needed only (``pipeline/targeted.py``, ``evaluation.targeted``). Each
gets the judge's attack success rate and the refusal-score flip rate with 95% Wilson intervals,
and its capability cost on held-out harmless prompts: the rise in cross-entropy of the
unmodified model's own greedy answers, and the KL divergence of the next-token distribution at
the last prompt position (heretic's damage metric), with the share of prompts whose most likely
next token is unchanged. The report plots every method on one ASR-vs-KL chart.

The first paper's methods [Y25] come from the attribution stage: the CosSim+AP set and its
baselines clamped (``f ← c·f``, c chosen on the validation split), random clamped sets matched
to CosSim+AP, every method's paired comparison with CosSim+AP, and inducing refusal on the
held-out harmless prompts by setting the CosSim+AP features to the v chosen on validation.
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
    FeatureOp,
)
from refusal_lens.judges import Judge, get_judge
from refusal_lens.pipeline.attribution import Attribution, ValueTrial
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.interactions import Interactions
from refusal_lens.pipeline.prompt_sets import PromptSets, ScoredPrompt, texts
from refusal_lens.pipeline.search import MinimalSets
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.pipeline.targeted import TargetedChoice, file_fields, targeted_methods
from refusal_lens.pipeline.targeted import report_section as targeted_report
from refusal_lens.report import Cell, ReportSection, data, img, save_figure, subplots, table
from refusal_lens.stats import compare_paired, rate_with_interval

SEARCH_FEATURE_SETS = ("minimal_shared", "minimal_shared_union", "minimal_cheap")  # their files are the search stage's
MAIN_METHODS = ("none", "directional_ablation", "minimal_shared", "interaction", "random_1",
                "cossim_ap_clamp")  # in the figures


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
    methods: dict[str, CapabilityCost] = Field(description="method → its capability cost (`cossim_ap_induce`: the "
                                                           "CosSim+AP features set to v)")
    completions: list[str] = Field(description="the unmodified model's greedy answers every method is scored on")


class PairedComparison(BaseModel):
    diff: float = Field(description="ASR of the method − ASR of `cossim_ap_clamp`")
    ci_low: float = Field(description="95% paired-bootstrap interval of the difference, low end")
    ci_high: float = Field(description="its high end")
    p_mcnemar: float = Field(description="exact McNemar test, two-sided")
    only_reference: int = Field(description="prompts only `cossim_ap_clamp` jailbreaks")
    only_method: int = Field(description="prompts only the method jailbreaks")


class SourceRate(BaseModel):
    asr: float = Field(description="attack success rate on this source's held-out prompts")
    ci_low: float = Field(description="its 95% Wilson interval, low end")
    ci_high: float = Field(description="its 95% Wilson interval, high end")
    n: int = Field(description="held-out prompts of this source")


class InduceEvaluation(BaseModel):
    value: float = Field(description="v, chosen on the harmless validation prompts (`attribution.induce`)")
    mode: str = Field(description="`attribution.induce_mode`: v absolute or × each feature's mean activation")
    refusal_rate: float = Field(description="share of the held-out harmless prompts the judge finds refused "
                                            "with the CosSim+AP features set to v")
    ci_low: float = Field(description="its 95% Wilson interval, low end")
    ci_high: float = Field(description="its 95% Wilson interval, high end")
    n: int = Field(description="held-out harmless prompts (`prompt_sets.harmless_eval`)")
    score_refusal_rate: float = Field(description="share with a refusal score > 0")
    baseline_refusal_rate: float = Field(description="the judge's refusal rate of the unmodified model's answers "
                                                     "to the same prompts")
    capability: CapabilityCost | None = Field(None, description="its capability cost on the same prompts")
    per_prompt: list[PromptOutcome] = Field(description="one outcome per held-out harmless prompt")


class Evaluation(BaseModel):
    methods: dict[str, MethodResult] = Field(description=(
        "`none`, `directional_ablation`, `directional_ablation_A-B` (the direction ablated at blocks A..B only: "
        "the direction stage's `alternatives`, present only when its filters were relaxed), "
        "`minimal_shared` (the search's ∩ seeds, or ∪ when that is empty), "
        "`minimal_shared_union`, `interaction` (minimal ∪ the FM's top max(`interactions.top_k`)), "
        "`interaction_only`, `random_1..n` (matched in size and layers to `minimal_shared`); a feature method "
        "whose set is empty is left out; the attribution stage's sets clamped by c: `cossim_ap_clamp` and "
        "`<baseline>_clamp` (`evaluation.attribution_baselines`), `random_clamp_1..n` (matched to CosSim+AP)"))
    feature_sets: dict[str, list[FeatureKey]] = Field(description="method → the features it ablates (clamps, `*_clamp`)")
    per_prompt: dict[str, list[PromptOutcome]] = Field(description="method → one outcome per held-out prompt")
    capability: CapabilityRun | None = Field(description="null with `data.n_capability = 0`")
    targeted: dict[str, TargetedChoice] = Field(default_factory=dict, description=(
        "targeted method → its positions, condition, factor and thresholds, and the validation scores "
        "they were chosen by (`pipeline/targeted.py`)"))
    clamp_scale: float | None = Field(None, description="c of the clamped methods (`*_clamp`, `random_clamp_*`), "
                                                        "chosen on the validation split by the attribution stage")
    paired_vs_cossim_ap: dict[str, PairedComparison] = Field(default_factory=dict, description=(
        "method → its paired comparison with `cossim_ap_clamp` on the same held-out prompts"))
    asr_by_source: dict[str, dict[str, SourceRate]] = Field(default_factory=dict, description=(
        "method → harmful source (the prompt id's prefix) → its ASR there"))
    induce: InduceEvaluation | None = Field(None, description="inducing refusal on the held-out harmless prompts; "
                                                              "null with `data.n_capability = 0`")


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
    if feature_sets["minimal_cheap"]:  # with the edit the cheap tracks searched under
        methods["minimal_cheap"] = [search.harmless_cost.edit(ctx.saes, feature_sets["minimal_cheap"])]
    add_clamp_methods(ctx, inputs["attribution"], methods, feature_sets)
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


def add_clamp_methods(ctx: RunContext, attribution: Attribution, methods: dict,
                      feature_sets: dict[str, list[FeatureKey]]) -> None:
    """[Y25]'s methods: CosSim+AP, its baselines and random matched sets, each clamped by c."""
    op = attribution.clamp_op()
    config = ctx.config.evaluation
    clamped = {f"{name}_clamp": attribution.feature_sets[name] for name in ("cossim_ap", *config.attribution_baselines)
               if name in attribution.feature_sets}
    random_sets = matched_random_sets(ctx.saes, attribution.feature_sets["cossim_ap"], config.n_random_clamps,
                                      ctx.config.seed)
    clamped.update({f"random_clamp_{i + 1}": random_set for i, random_set in enumerate(random_sets)})
    for name, features in clamped.items():
        feature_sets[name] = features
        methods[name] = [FeatureIntervention(ctx.saes, features, op)]


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
    attribution: Attribution = inputs["attribution"]
    induce_rows = induce_outcomes(ctx, attribution, sets.harmless_eval, judge)
    capability = capability_cost(ctx, sets.harmless_eval, {**methods, INDUCE: [induce_intervention(ctx, attribution)]})
    for name, cost in (capability.methods if capability else {}).items():
        if name in results:
            results[name].capability = cost
    return Evaluation(methods=results, feature_sets=feature_sets, per_prompt=per_prompt, capability=capability,
                      clamp_scale=attribution.clamp.chosen, paired_vs_cossim_ap=paired_vs_reference(ctx, per_prompt),
                      asr_by_source=asr_by_source(per_prompt), targeted=targeted,
                      induce=induce_evaluation(attribution, sets.harmless_eval, induce_rows, capability, judge))


# --- the first paper's methods: paired comparisons, sources, inducing refusal -----------------
REFERENCE = "cossim_ap_clamp"
INDUCE = "cossim_ap_induce"


def paired_vs_reference(ctx: RunContext, per_prompt: dict[str, list[PromptOutcome]]) -> dict[str, PairedComparison]:
    """Every method against ``cossim_ap_clamp``, prompt by prompt (answered = jailbroken)."""
    reference = [not r.refused for r in per_prompt[REFERENCE]]
    compared = {}
    for name, rows in per_prompt.items():
        if name == REFERENCE:
            continue
        test = compare_paired(reference, [not r.refused for r in rows], seed=ctx.config.seed)
        compared[name] = PairedComparison(
            diff=test["bootstrap"]["diff"], ci_low=test["bootstrap"]["ci_low"], ci_high=test["bootstrap"]["ci_high"],
            p_mcnemar=test["mcnemar"]["p_value"], only_reference=test["mcnemar"]["only_a"],
            only_method=test["mcnemar"]["only_b"])
    return compared


def prompt_source(prompt_id: str) -> str:
    """The source a prompt id names: ``<source>:<key>`` (``refusal_lens.data``)."""
    return prompt_id.split(":", 1)[0]


def asr_by_source(per_prompt: dict[str, list[PromptOutcome]]) -> dict[str, dict[str, SourceRate]]:
    by_source: dict[str, dict[str, SourceRate]] = {}
    for name, rows in per_prompt.items():
        answered: dict[str, list[bool]] = {}
        for row in rows:
            answered.setdefault(prompt_source(row.id), []).append(not row.refused)
        by_source[name] = {}
        for source, values in sorted(answered.items()):
            rate = rate_with_interval(values)
            by_source[name][source] = SourceRate(asr=rate["rate"], ci_low=rate["ci_low"], ci_high=rate["ci_high"],
                                                 n=rate["n"])
    return by_source


def induce_intervention(ctx: RunContext, attribution: Attribution) -> FeatureIntervention:
    return FeatureIntervention(ctx.saes, attribution.feature_sets["cossim_ap"], attribution.induce_op())


def induce_outcomes(ctx: RunContext, attribution: Attribution, harmless: list[ScoredPrompt],
                    judge: Judge) -> list[PromptOutcome]:
    """Score, answer and judge the held-out harmless prompts with the CosSim+AP features set to v."""
    if not harmless:
        return []
    config = ctx.config.evaluation
    ctx.console.print(f"  inducing refusal (v = {attribution.induce.chosen:g}) on {len(harmless)} held-out "
                      "harmless prompts")
    rows = evaluate_prompts(ctx.chat_model, [p.as_prompt("eval") for p in harmless], judge,
                            interventions=[induce_intervention(ctx, attribution)],
                            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    return [PromptOutcome.model_validate(r.to_json()) for r in rows]


def induce_evaluation(attribution: Attribution, harmless: list[ScoredPrompt], rows: list[PromptOutcome],
                      capability: CapabilityRun | None, judge: Judge) -> InduceEvaluation | None:
    if not rows or capability is None:
        return None
    refused = rate_with_interval([r.refused for r in rows])
    baseline = judge.judge([p.text for p in harmless], capability.completions)
    return InduceEvaluation(
        value=attribution.induce.chosen, mode=attribution.induce_mode, refusal_rate=refused["rate"],
        ci_low=refused["ci_low"], ci_high=refused["ci_high"], n=refused["n"],
        score_refusal_rate=sum(r.refusal_score > 0 for r in rows) / len(rows),
        baseline_refusal_rate=sum(v.refused for v in baseline) / len(baseline),
        capability=capability.methods.get(INDUCE), per_prompt=rows)


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
    lines += induce_summary(result)
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
    front = pareto_front({name: (m.capability.kl_mean, m.asr) for name, m in costed.items()})
    labelled = [name for name in costed if name in front or name in MAIN_METHODS]
    for name, m in costed.items():
        kl = m.capability.kl_mean
        ax.errorbar([kl], [m.asr], xerr=[[kl - m.capability.kl_ci[0]], [m.capability.kl_ci[1] - kl]],
                    yerr=[[m.asr - m.ci_low], [m.ci_high - m.asr]], fmt="o", capsize=3,
                    alpha=0.8 if name in labelled else 0.35)
    for name, offset in zip(labelled, _label_offsets([(costed[n].capability.kl_mean, costed[n].asr) for n in labelled])):
        ax.annotate(name, (costed[name].capability.kl_mean, costed[name].asr), textcoords="offset points",
                    xytext=offset, fontsize=7, arrowprops={"arrowstyle": "-", "lw": 0.5, "alpha": 0.5})
    ax.step([costed[n].capability.kl_mean for n in front], [costed[n].asr for n in front], where="post",
            color="black", lw=1, ls="--", label="Pareto front")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(left=0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("mean KL on held-out harmless prompts (next token, last prompt position; 95% bootstrap CI)")
    ax.set_ylabel("attack success rate (95% Wilson CI)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Refusal removed vs harmless behaviour changed: up and to the left is better", fontsize=10)
    if len(labelled) < len(costed):
        fig.text(0.01, 0.01, f"Named: the Pareto front and the main methods; the other {len(costed) - len(labelled)} "
                 "(faint) are in the table.", fontsize=7)
    return save_figure(fig, folder, "asr_vs_kl")


def _label_offsets(points: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Label offsets (points) that stack the labels of points at about the same height."""
    offsets, seen = [], []
    for _, asr in points:
        level = sum(abs(asr - other) < 0.04 for other in seen)
        seen.append(asr)
        offsets.append((6, 4 - 10 * level if asr > 0.5 else 4 + 10 * level))
    return offsets


def induce_summary(result: Evaluation) -> list[str]:
    induce = result.induce
    if induce is None:
        return []
    cost = f", Δ CE {induce.capability.delta_cross_entropy:+.3f}" if induce.capability else ""
    return [(f"Induced refusal (CosSim+AP set to v = {induce.value:g}, {induce.mode}): {induce.refusal_rate:.1%} "
             f"[{induce.ci_low:.1%}, {induce.ci_high:.1%}] of {induce.n} held-out harmless prompts refused "
             f"(unmodified {induce.baseline_refusal_rate:.1%}){cost}")]


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


PAPER_ROWS = (("none", "no intervention"), ("cosine_clamp", "cosine"),
              ("activation_difference_clamp", "activation difference"), ("attribution_clamp", "attribution"),
              ("cossim_ap_clamp", "CosSim+AP"), ("directional_ablation", "directional ablation"))


def _rate(rate: float, low: float, high: float) -> str:
    return f"{rate:.0%} [{low:.0%}, {high:.0%}]"


def paper_table(result: Evaluation) -> str:
    """[Y25]'s table: methods × harmful sources (when the run has several), then the paired
    comparison with CosSim+AP and the capability cost."""
    rows_named = [*PAPER_ROWS, *((n, n.replace("_", " ")) for n in result.methods if n.startswith("random_clamp_"))]
    sources = sorted({source for by in result.asr_by_source.values() for source in by})
    sources = sources if len(sources) > 1 else []
    rows = []
    for name, label in rows_named:
        method = result.methods.get(name)
        if method is None:
            continue
        by_source = result.asr_by_source.get(name, {})
        paired = result.paired_vs_cossim_ap.get(name)
        rows.append([label, *(_rate(by_source[s].asr, by_source[s].ci_low, by_source[s].ci_high) if s in by_source
                              else "–" for s in sources),
                     _rate(method.asr, method.ci_low, method.ci_high),
                     f"{paired.diff:+.0%} [{paired.ci_low:+.0%}, {paired.ci_high:+.0%}]" if paired else "reference",
                     f"{paired.p_mcnemar:.3f}" if paired else "–",
                     f"{method.capability.delta_cross_entropy:+.3f}" if method.capability else "–"])
    header = ["method", *sources, "all (95% CI)", "Δ vs CosSim+AP (paired bootstrap)", "McNemar p", "Δ CE harmless"]
    return table(rows, header)


def fig_induce(result: Evaluation, trials: list[ValueTrial], folder: Path) -> str:
    induce = result.induce
    fig, ax = subplots(figsize=(6, 3.5))
    trials = sorted(trials, key=lambda t: t.value)
    values = [t.value for t in trials]
    ax.errorbar(values, [t.rate for t in trials], yerr=[[t.rate - t.ci_low for t in trials],
                                                        [t.ci_high - t.rate for t in trials]],
                marker="o", capsize=3, label=f"validation (n={trials[0].n}): choosing v")
    ax.errorbar([induce.value], [induce.refusal_rate], yerr=[[induce.refusal_rate - induce.ci_low],
                                                             [induce.ci_high - induce.refusal_rate]],
                marker="s", color="tab:red", capsize=3, label=f"held-out at the chosen v (n={induce.n})")
    ax.axhline(induce.baseline_refusal_rate, color="grey", ls="--", label="held-out, no intervention")
    ax.set_xlabel("v" + (" (× mean activation)" if induce.mode == "mean_activation" else ""))
    ax.set_ylabel("refusal rate of harmless prompts")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Inducing refusal: CosSim+AP features set to v")
    return save_figure(fig, folder, "induce_refusal")


def attribution_sections(result: Evaluation, inputs: Inputs, figures: Path) -> list[ReportSection]:
    sections = [ReportSection("Clamping feature sets (the first paper's table)", (
        f"<p>Each set clamped by c = {result.clamp_scale:g} (chosen on the validation split), every position, "
        "generated ones included; ASR on the held-out harmful prompts with 95% Wilson intervals, and the paired "
        "difference with CosSim+AP on the same prompts.</p>" + paper_table(result)))]
    induce = result.induce
    if induce is not None:
        cost = f"{induce.capability.delta_cross_entropy:+.3f}" if induce.capability else "n/a"
        sections.append(ReportSection("Inducing refusal on harmless prompts", (
            img(fig_induce(result, inputs["attribution"].induce.trials, figures), "induce curve")
            + f"<p>At v = {induce.value:g}: {_rate(induce.refusal_rate, induce.ci_low, induce.ci_high)} of "
            f"{induce.n} held-out harmless prompts refused (judge), {induce.score_refusal_rate:.0%} with a refusal "
            f"score above 0, against {induce.baseline_refusal_rate:.0%} unmodified; capability cost Δ CE {cost}."
            "</p>")))
    return sections


def report(result: Evaluation, inputs: Inputs, figures: Path) -> list[ReportSection]:
    rows, names = _per_prompt_rows(result)
    return [
        *attribution_sections(result, inputs, figures),
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
        if name.startswith("random_clamp_"):
            ctx.export_feature_set(name, features, FeatureOp("scale", result.clamp_scale))
        elif features and name not in SEARCH_FEATURE_SETS and not name.endswith("_clamp"):  # those: attribution's
            ctx.export_feature_set(name, features, **file_fields(result.targeted.get(name)))


STAGE = Stage(
    name="evaluation",
    result=Evaluation,
    compute=compute,
    reads=("prompt_sets", "direction", "attribution", "search", "interactions"),
    config_sections=("evaluation",),  # interactions.top_k and seed are covered by the stages read
    summary=summary,
    report=report,
    export=export,
)
