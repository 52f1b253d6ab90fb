"""Stage: attribution of refusal to SAE features, the feature sets of [Y25] and their clamp and induce
values (METHOD.md §5).

On the harmful discovery prompts (`attribution.prompts`, train split): LA-IG or attribution
patching of ``m = logit[jailbreak] - logit[refusal]`` to the features of every attributed SAE
layer (``refusal_lens.attribution``); the top-k feature sets CosSim+AP (attribution restricted to
the cosine candidates), cosine alone, attribution alone and activation difference, globally and
per prompt. Then, on the validation split only: the clamp scale c (``f ← c·f``) that jailbreaks
most harmful validation prompts with the CosSim+AP set, and the value v (``f ← v``) that makes the
CosSim+AP set refuse most harmless validation prompts. The evaluation stage clamps and sets
with them on held-out prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from refusal_lens.attribution import (AttributionResult, FeatureScores, ScoredFeature, activation_difference_features,
                                      attribute, attribution_features, cosine_features, cossim_ap_features,
                                      feature_scores, firing_means)
from refusal_lens.evaluate import evaluate_prompts
from refusal_lens.interventions import DirectionalAblation, FeatureIntervention, FeatureKey, FeatureOp
from refusal_lens.judges import get_judge
from refusal_lens.pipeline.candidates import Candidates
from refusal_lens.pipeline.config import check_attribution
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.prompt_sets import PromptSets, ScoredPrompt
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, img, number, percent, save_figure, subplots, table
from refusal_lens.scoring import refusal_scores
from refusal_lens.stats import rate_with_interval

PER_PROMPT_SETS = ("cossim_ap", "attribution")  # the sets that have a per-prompt ranking


# --- the result ---------------------------------------------------------------------------
class FeatureScore(BaseModel):
    layer: int = Field(description="the SAE's layer")
    feature: int = Field(description="the feature's index in that SAE")
    score: float = Field(description="the set's ranking score: mean attribution over the scored positions "
                                     "(cossim_ap, attribution), cosine with the direction (cosine), mean harmful "
                                     "− harmless activation (activation_difference)")


class PromptAttribution(BaseModel):
    id: str = Field(description="the prompt's id")
    m_clean: float = Field(description="m = logit[jailbreak] − logit[refusal], unmodified model")
    m_patched: float = Field(description="m under directional ablation at all layers")
    jailbreak_token: str = Field(description="argmax non-refusal next token under directional ablation")
    top: dict[str, list[FeatureScore]] = Field(description="`cossim_ap` and `attribution`: this prompt's top k")


class LayerTotal(BaseModel):
    layer: int = Field(description="the SAE's layer")
    features: float = Field(description="mean over prompts of the summed attributions of every feature (all "
                                        "positions)")
    error: float = Field(description="mean over prompts of the SAE error term's share")
    m_change: float | None = Field(description="mean of m with only this layer patched − m clean, which the two "
                                               "above estimate (null for atp)")
    changed_per_prompt: float = Field(description="mean (position, feature) entries whose activation changed")


class ValueTrial(BaseModel):
    value: float = Field(description="c (clamp) or v (induce)")
    rate: float = Field(description="jailbroken share of harmful (clamp) or refused share of harmless (induce) "
                                    "validation prompts, by `attribution.select_by`")
    ci_low: float = Field(description="its 95% Wilson interval, low end")
    ci_high: float = Field(description="its 95% Wilson interval, high end")
    n: int = Field(description="validation prompts")
    mean_refusal_score: float = Field(description="mean refusal score under the edit")


class InducedFeature(BaseModel):
    layer: int = Field(description="the SAE's layer")
    feature: int = Field(description="the feature's index")
    mean_activation: float | None = Field(description="mean activation where it fires on the attributed prompts "
                                                      "(null: it fires on none of them, either way)")
    measured: str = Field(description="clean: on the attributed prompts; ablated: under directional ablation, for a "
                                      "feature that never fires on them clean (it turns on when refusal is "
                                      "removed); none: never fires, the mean of the others' is used")
    value: float = Field(description="what the chosen v sets it to")


class ValueChoice(BaseModel):
    select_by: str = Field(description="`attribution.select_by`, with the judge when it is `judge`")
    split: str = Field(description="the prompts it was chosen on (validation only)")
    trials: list[ValueTrial] = Field(description="one per candidate value, in the config's order")
    chosen: float = Field(description="the highest rate; ties go to the smallest |value|")


class Attribution(BaseModel):
    method: str = Field(description="`ig` (integrated gradients per layer) or `atp` (attribution patching)")
    steps: int = Field(description="α points of ig (1 for atp)")
    layers: list[int] = Field(description="the SAE layers attributed")
    prompt_ids: list[str] = Field(description="the harmful discovery prompts attributed")
    refusal_token: str = Field(description="the refusal token of m")
    m_clean: float = Field(description="mean m, unmodified model")
    m_patched: float = Field(description="mean m under directional ablation at all layers")
    k: int = Field(description="`attribution.k`")
    feature_sets: dict[str, list[FeatureKey]] = Field(description=(
        "`cossim_ap`, `cosine`, `attribution` (and `activation_difference` when computed): each the global "
        "top k, best first"))
    scores: dict[str, list[FeatureScore]] = Field(description="the same sets with their ranking scores")
    per_prompt: list[PromptAttribution] = Field(description="one per attributed prompt")
    layer_totals: list[LayerTotal] = Field(description="per attributed layer, features vs error term")
    clamp: ValueChoice = Field(description="the clamp scale c, chosen with the CosSim+AP set on harmful "
                                           "validation prompts and used for every clamped set")
    induce_mode: str = Field(description="`attribution.induce_mode`")
    induce: ValueChoice = Field(description="v, chosen with the CosSim+AP set on harmless validation prompts")
    induced_features: list[InducedFeature] = Field(description="the CosSim+AP features and their values at v")

    def clamp_op(self) -> FeatureOp:
        return FeatureOp("scale", self.clamp.chosen)

    def induce_op(self) -> FeatureOp:
        return FeatureOp.set_each({(f.layer, f.feature): f.value for f in self.induced_features})


# --- the computation ----------------------------------------------------------------------
def attributed_layers(layers: list[int] | str, sae_layers: Sequence[int], candidates: Candidates) -> list[int]:
    if layers == "candidates":
        return candidates.layers()
    if layers == "all":
        return list(sae_layers)
    missing = sorted(set(layers) - set(sae_layers))
    if missing:
        raise ValueError(f"attribution.layers {missing} have no SAE; the SAEs cover {list(sae_layers)}.")
    uncovered = sorted(set(candidates.layers()) - set(layers))
    if uncovered:
        raise ValueError(f"attribution.layers miss the candidate layers {uncovered}: add them, or use "
                         "attribution.layers = 'candidates'")
    return sorted(layers)


def _scored(features: Sequence[ScoredFeature]) -> list[FeatureScore]:
    return [FeatureScore(layer=f.layer, feature=f.feature, score=f.score) for f in features]


def feature_sets(ctx: RunContext, sets: PromptSets, candidates: Candidates, scores: FeatureScores,
                 layers: list[int]) -> dict[str, list[ScoredFeature]]:
    """The global top-k sets of [Y25]: CosSim+AP and its baselines."""
    config = ctx.config.attribution
    rows = [(c.layer, c.feature, c.cosine) for c in candidates.features]
    try:
        ranked = {"cossim_ap": cossim_ap_features(scores, rows, config.k),
                  "cosine": cosine_features(rows, config.k),
                  "attribution": attribution_features(scores, config.k)}
    except ValueError as error:  # k larger than the features that changed
        raise ValueError(f"{error} Lower attribution.k, or attribute on more prompts or layers.") from None
    if config.activation_difference:
        ranked["activation_difference"] = activation_difference_features(
            ctx.chat_model, ctx.saes, [p.text for p in sets.harmful_train], [p.text for p in sets.harmless_train],
            layers=layers, k=config.k, batch_size=ctx.config.batch_size)
    return ranked


def per_prompt_tops(ctx: RunContext, result: AttributionResult, scores: FeatureScores, candidates: Candidates,
                    prompts: list[ScoredPrompt]) -> list[PromptAttribution]:
    k = ctx.config.attribution.k
    restricted = scores.restricted((c.layer, c.feature) for c in candidates.features)
    decode = ctx.chat_model.tokenizer.decode
    return [PromptAttribution(id=p.id, m_clean=float(result.m_clean[i]), m_patched=float(result.m_patched[i]),
                              jailbreak_token=decode([int(result.jailbreak_token[i])]),
                              top={"cossim_ap": _scored(restricted.top(k, prompt=i)),
                                   "attribution": _scored(scores.top(k, prompt=i))})
            for i, p in enumerate(prompts)]


def layer_totals(result: AttributionResult) -> list[LayerTotal]:
    totals = []
    for layer, entries in sorted(result.layers.items()):
        per_prompt = torch.zeros(result.n_prompts, dtype=entries.attribution.dtype)
        per_prompt.index_add_(0, entries.prompt, entries.attribution)
        change = (entries.m_patched_at_layer - result.m_clean).double().mean()
        totals.append(LayerTotal(layer=layer, features=float(per_prompt.double().mean()),
                                 error=float(entries.error.sum(1).double().mean()),
                                 m_change=None if change.isnan() else float(change),
                                 changed_per_prompt=len(entries.feature) / result.n_prompts))
    return totals


def validation_trial(ctx: RunContext, prompts: list[ScoredPrompt], intervention: FeatureIntervention,
                     value: float, want_refused: bool) -> ValueTrial:
    """The share of ``prompts`` that refuse (``want_refused``) or answer under ``intervention``."""
    config = ctx.config.attribution
    if config.select_by == "judge":
        rows = evaluate_prompts(ctx.chat_model, [p.as_prompt("val") for p in prompts], get_judge(config.judge),
                                interventions=[intervention], max_new_tokens=config.max_new_tokens,
                                batch_size=ctx.config.batch_size)
        scores = [r.refusal_score for r in rows]
        hits = [r.refused == want_refused for r in rows]
    else:
        scores = refusal_scores(ctx.chat_model, [p.text for p in prompts], batch_size=ctx.config.batch_size,
                                interventions=[intervention]).tolist()
        hits = [(s > 0) == want_refused for s in scores]
    rate = rate_with_interval(hits)
    return ValueTrial(value=value, rate=rate["rate"], ci_low=rate["ci_low"], ci_high=rate["ci_high"], n=rate["n"],
                      mean_refusal_score=sum(scores) / len(scores))


def best_trial(trials: Sequence[ValueTrial]) -> ValueTrial:
    """The highest rate; among equal rates, the smallest |value| (the mildest edit)."""
    return min(trials, key=lambda t: (-t.rate, abs(t.value)))


def choose_clamp(ctx: RunContext, sets: PromptSets, features: list[FeatureKey]) -> ValueChoice:
    """c on the harmful validation prompts: the share jailbroken with ``features`` clamped."""
    config = ctx.config.attribution
    ctx.console.print(f"  choosing the clamp scale among {config.scales} on {len(sets.harmful_val)} "
                      "harmful validation prompts")
    trials = [validation_trial(ctx, sets.harmful_val, FeatureIntervention(ctx.saes, features, FeatureOp("scale", c)),
                               c, want_refused=False) for c in config.scales]
    return ValueChoice(select_by=_selector(config), split="harmful_val", trials=trials, chosen=best_trial(trials).value)


def induced_values(means: dict[FeatureKey, float | None], v: float, mode: str) -> dict[FeatureKey, float]:
    """Each feature's value for the sweep point ``v``: ``v`` (absolute) or ``v`` × its mean
    activation where it fires; a feature that never fires takes the mean of the others' means."""
    if mode == "absolute":
        return {key: v for key in means}
    fired = [m for m in means.values() if m is not None]
    if not fired:
        raise ValueError("None of the CosSim+AP features fires on the attributed prompts, so there is no "
                         "activation to scale: use attribution.induce_mode = 'absolute'.")
    fallback = sum(fired) / len(fired)
    return {key: v * (fallback if m is None else m) for key, m in means.items()}


def activation_scales(ctx: RunContext, instructions: list[str], features: list[FeatureKey], direction: torch.Tensor
                      ) -> tuple[dict[FeatureKey, float | None], dict[FeatureKey, str]]:
    """Each feature's mean activation where it fires on ``instructions``; for one that never
    fires there, where it fires under directional ablation (a feature that attribution finds
    because refusal's removal turns it on)."""
    means = firing_means(ctx.chat_model, ctx.saes, instructions, features, batch_size=ctx.config.batch_size)
    measured = {key: "clean" if mean is not None else "none" for key, mean in means.items()}
    silent = [key for key, mean in means.items() if mean is None]
    if silent:
        ablated = firing_means(ctx.chat_model, ctx.saes, instructions, silent, batch_size=ctx.config.batch_size,
                               interventions=[DirectionalAblation(direction)])
        for key, mean in ablated.items():
            if mean is not None:
                means[key], measured[key] = mean, "ablated"
    return means, measured


def choose_induce(ctx: RunContext, sets: PromptSets, features: list[FeatureKey],
                  means: dict[FeatureKey, float | None]) -> ValueChoice:
    """v on the harmless validation prompts: the share refused with ``features`` set to v."""
    config = ctx.config.attribution
    ctx.console.print(f"  choosing the induce value among {config.induce_values} ({config.induce_mode}) on "
                      f"{len(sets.harmless_val)} harmless validation prompts")
    trials = []
    for v in config.induce_values:
        op = FeatureOp.set_each(induced_values(means, v, config.induce_mode))
        trials.append(validation_trial(ctx, sets.harmless_val, FeatureIntervention(ctx.saes, features, op), v,
                                       want_refused=True))
    return ValueChoice(select_by=_selector(config), split="harmless_val", trials=trials,
                       chosen=best_trial(trials).value)


def _selector(config) -> str:
    return f"judge ({config.judge})" if config.select_by == "judge" else "refusal_score"


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Attribution:
    config = ctx.config.attribution
    sets: PromptSets = inputs["prompt_sets"]
    candidates: Candidates = inputs["candidates"]
    check_attribution(config, ctx.config.candidates, n_candidates=len(candidates.features))
    prompts = getattr(sets, config.prompts)[:config.n_prompts]
    if not prompts:
        raise ValueError(f"No prompts in prompt_sets.{config.prompts} to attribute on.")
    layers = attributed_layers(config.layers, ctx.saes.layers, candidates)
    ctx.console.print(f"  {config.method} over {len(prompts)} prompts at layers {layers}")
    vector = load_vector(inputs.dir("direction"))
    result = attribute(ctx.chat_model, ctx.saes, [p.text for p in prompts], vector, layers=layers, method=config.method, steps=config.steps, batch_size=config.batch_size)
    scores = feature_scores(result)
    ranked = feature_sets(ctx, sets, candidates, scores, layers)
    cossim_ap = [(f.layer, f.feature) for f in ranked["cossim_ap"]]
    means, measured = activation_scales(ctx, [p.text for p in prompts], cossim_ap, vector)
    induce = choose_induce(ctx, sets, cossim_ap, means)
    values = induced_values(means, induce.chosen, config.induce_mode)
    return Attribution(
        method=result.method, steps=result.steps, layers=layers, prompt_ids=[p.id for p in prompts],
        refusal_token=ctx.chat_model.tokenizer.decode([result.refusal_token]),
        m_clean=float(result.m_clean.double().mean()), m_patched=float(result.m_patched.double().mean()),
        k=config.k, feature_sets={name: [(f.layer, f.feature) for f in fs] for name, fs in ranked.items()},
        scores={name: _scored(fs) for name, fs in ranked.items()},
        per_prompt=per_prompt_tops(ctx, result, scores, candidates, prompts),
        layer_totals=layer_totals(result), clamp=choose_clamp(ctx, sets, cossim_ap),
        induce_mode=config.induce_mode, induce=induce,
        induced_features=[InducedFeature(layer=L, feature=i, mean_activation=means[(L, i)], measured=measured[(L, i)],
                                         value=values[(L, i)]) for L, i in cossim_ap])


# --- what it shows ------------------------------------------------------------------------
def _induce_unit(result: Attribution) -> str:
    return "× mean activation" if result.induce_mode == "mean_activation" else "(absolute)"


def summary(result: Attribution) -> list[str]:
    steps = f", {result.steps} steps" if result.method == "ig" else ""
    clamp = next(t for t in result.clamp.trials if t.value == result.clamp.chosen)
    induce = next(t for t in result.induce.trials if t.value == result.induce.chosen)
    return [(f"Attribution ({result.method}{steps}, {len(result.prompt_ids)} prompts, layers {result.layers}): "
             f"CosSim+AP top {result.k}, clamp c = {result.clamp.chosen:g} (validation {clamp.rate:.0%} jailbroken), "
             f"induce v = {result.induce.chosen:g} {_induce_unit(result)} (validation {induce.rate:.0%} refused)")]


def _label(layer: int, feature: int) -> str:
    return f"L{layer}:{feature}"


def fig_feature_bars(result: Attribution, folder: Path) -> str:
    names = [n for n in PER_PROMPT_SETS if n in result.scores]
    fig, axes = subplots(nrows=len(names), figsize=(max(6, 0.35 * result.k + 2), 2.8 * len(names)), squeeze=False)
    colours = {L: f"C{j % 10}" for j, L in enumerate(result.layers)}
    for ax, name in zip(axes[:, 0], names):
        features = result.scores[name]
        ax.bar(range(len(features)), [f.score for f in features],
               color=[colours.get(f.layer, "grey") for f in features])
        ax.set_xticks(range(len(features)), [_label(f.layer, f.feature) for f in features], rotation=60,
                      ha="right", fontsize=7)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("mean attribution")
        ax.set_title(f"{name}: global top {result.k} ({result.method}), coloured by layer", fontsize=9)
    return save_figure(fig, folder, "attribution_features")


def fig_layer_totals(result: Attribution, folder: Path) -> str:
    totals = result.layer_totals
    fig, ax = subplots(figsize=(max(5, 0.7 * len(totals) + 2), 3.2))
    x = torch.arange(len(totals)).tolist()
    ax.bar([i - 0.2 for i in x], [t.features for t in totals], width=0.4, label="features")
    ax.bar([i + 0.2 for i in x], [t.error for t in totals], width=0.4, label="SAE error term")
    changes = [(i, t.m_change) for i, t in zip(x, totals) if t.m_change is not None]
    if changes:
        ax.scatter(*zip(*changes), color="black", marker="_", s=200, label="m(layer patched) − m(clean)")
    ax.set_xticks(x, [str(t.layer) for t in totals])
    ax.set_xlabel("SAE layer")
    ax.set_ylabel("attribution to m (mean over prompts)")
    ax.legend(fontsize=8)
    return save_figure(fig, folder, "attribution_layers")


def _trial_rows(choice: ValueChoice) -> list[list[str]]:
    return [[f"{t.value:g}" + (" (chosen)" if t.value == choice.chosen else ""), percent(t.rate),
             f"[{percent(t.ci_low)}, {percent(t.ci_high)}]", str(t.n), number(t.mean_refusal_score)]
            for t in choice.trials]


def report(result: Attribution, inputs: Inputs, figures: Path) -> list[ReportSection]:
    steps = f" with {result.steps} α steps" if result.method == "ig" else ""
    sets_rows = [[name, ", ".join(_label(L, i) for L, i in features)] for name, features in result.feature_sets.items()]
    layer_rows = [[t.layer, number(t.features), number(t.error), number(t.m_change), f"{t.changed_per_prompt:.0f}"]
                  for t in result.layer_totals]
    header = ["value", "rate", "95% CI", "n", "mean refusal score"]
    return [
        ReportSection("Attribution to SAE features", (
            f"<p>{result.method}{steps} on {len(result.prompt_ids)} harmful discovery prompts, layers "
            f"{', '.join(map(str, result.layers))}; m = logit[jailbreak] − logit[{result.refusal_token}]: "
            f"{result.m_clean:+.2f} clean, {result.m_patched:+.2f} under directional ablation.</p>"
            + img(fig_feature_bars(result, figures), "attribution bars")
            + img(fig_layer_totals(result, figures), "attribution per layer")
            + table(layer_rows, ["layer", "features", "error term", "m change", "changed entries / prompt"])
            + table(sets_rows, ["feature set", f"global top {result.k}"]))),
        ReportSection("Clamp scale and induce value (validation split)", (
            f"<p>Clamp c ({result.clamp.select_by}, {result.clamp.split}): share jailbroken with the CosSim+AP "
            "set multiplied by c.</p>" + table(_trial_rows(result.clamp), header)
            + f"<p>Induce v {_induce_unit(result)} ({result.induce.select_by}, {result.induce.split}): share "
            "refused with the CosSim+AP set set to v.</p>" + table(_trial_rows(result.induce), header))),
    ]


def export(ctx: RunContext, result: Attribution, stage_dir: StageDir) -> None:
    """``<name>_clamp.json`` for every set (scale by c) and ``cossim_ap_induce.json`` (set to v)."""
    for name, features in result.feature_sets.items():
        ctx.export_feature_set(f"{name}_clamp", features, result.clamp_op())
    ctx.export_feature_set("cossim_ap_induce", result.feature_sets["cossim_ap"], result.induce_op())


STAGE = Stage(
    name="attribution",
    result=Attribution,
    compute=compute,
    reads=("prompt_sets", "direction", "candidates"),
    config_sections=("attribution",),
    summary=summary,
    report=report,
    export=export,
)
