"""Stage: harm features upstream of the refusal features [Y25] (METHOD.md §5), and the causal
effect of editing them on the refusal features and score (and the reverse), vs matched random.

Harm features: SAE features at layers below the refusal features' highest layer with the
largest activation difference harmful − harmless on the training prompts (refusal features
left out). On the held-out harmful prompts: edit them (``upstream.op``) and measure the
refusal features at the last prompt position and the refusal score, against random upstream
sets matched in layers and drawn from the features active on those prompts; then the reverse
(clamp the refusal features, read the harm features). Only features at a higher layer than an
edited one can move: the results say how many could.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from rich.console import RenderableType

from refusal_lens.activations import read_features
from refusal_lens.analyses.controls import matched_active_sets
from refusal_lens.analyses.upstream import (
    Readout,
    effect_matrix,
    harm_features,
    reachable,
    read_targets,
    set_effect,
    upstream_layers,
)
from refusal_lens.interventions import FeatureKey, FeatureOp
from refusal_lens.pipeline.categories import refusal_set
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, img, save_figure, subplots, table
from refusal_lens.stats import mean_with_interval


class ScoredKey(BaseModel):
    layer: int = Field(description="the feature's layer")
    feature: int = Field(description="its index")
    difference: float = Field(description="mean activation on harmful minus harmless training prompts (mean over "
                                          "the positions after the template's prefix)")


class Effect(BaseModel):
    relative_change: float | None = Field(description="mean over prompts of the change of the read features' "
                                                      "total activation, relative to its clean value (null: it "
                                                      "was 0 on every prompt)")
    relative_ci: tuple[float, float] | None = Field(description="its 95% bootstrap interval")
    score_change: float = Field(description="mean change of the refusal score")
    score_ci: tuple[float, float] = Field(description="its 95% bootstrap interval")
    n: int = Field(description="prompts with a nonzero clean total (the relative change's n)")


class Direction(BaseModel):
    edited: Effect = Field(description="editing the whole source set")
    random: list[Effect] = Field(description="editing each matched random set instead")
    random_sets: list[list[FeatureKey]] = Field(description="the random sets")
    matrix: list[list[float]] = Field(description="[source][target]: mean change of the target's activation when "
                                                  "the source alone is edited")
    reachable: list[list[bool]] = Field(description="[source][target]: the target sits above the source, so it "
                                                    "can move at all")
    score_change: list[float] = Field(description="per source: mean change of the refusal score")


class Upstream(BaseModel):
    layers: list[int] = Field(description="the SAE layers searched for harm features")
    harm_features: list[ScoredKey] = Field(description="the top `upstream.k`, best first")
    refusal_features: list[FeatureKey] = Field(description="the attribution stage's CosSim+AP set")
    n_prompts: int = Field(description="held-out harmful prompts the effects are measured on")
    forward: Direction = Field(description="harm features edited (`upstream.op`) → refusal features at the last "
                                           "prompt position, and the refusal score")
    reverse: Direction = Field(description="refusal features clamped × `upstream.scale` → harm features (mean over "
                                           "the instruction's positions)")
    op: str = Field(description="`upstream.op`")
    n_edges: int = Field(description="`upstream.n_edges`: effects drawn in the report's graph")


def _effect(base: Readout, edited: Readout, seed: int) -> Effect:
    change = set_effect(base, edited)
    relative = [v for v in change["relative_change"].tolist() if not math.isnan(v)]
    rel = mean_with_interval(relative, seed=seed)
    score = mean_with_interval(change["score_change"].tolist(), seed=seed)
    return Effect(relative_change=rel["mean"] if relative else None,
                  relative_ci=(rel["ci_low"], rel["ci_high"]) if relative else None,
                  score_change=score["mean"], score_ci=(score["ci_low"], score["ci_high"]), n=rel["n"])


def _direction(ctx: RunContext, prompts: list[str], sources: list[FeatureKey], targets: list[FeatureKey],
               where: str, op: FeatureOp, active: list[FeatureKey], exclude: list[FeatureKey]) -> Direction:
    model, saes, config, batch = ctx.chat_model, ctx.saes, ctx.config, ctx.config.batch_size
    base = read_targets(model, saes, prompts, targets, where, batch_size=batch)
    edited = read_targets(model, saes, prompts, targets, where, sources, op, batch)
    random_sets = matched_active_sets(active, sources, config.upstream.n_random_sets, config.seed, exclude=exclude)
    random = [_effect(base, read_targets(model, saes, prompts, targets, where, s, op, batch), config.seed)
              for s in random_sets if s]
    matrix, score = effect_matrix(model, saes, prompts, sources, targets, where, op, base, batch)
    return Direction(edited=_effect(base, edited, config.seed), random=random, random_sets=random_sets,
                     matrix=matrix.tolist(), score_change=score.tolist(),
                     reachable=[reachable([s], targets) for s in sources])


def active_features(ctx: RunContext, prompts: list[str], layers: list[int]) -> list[FeatureKey]:
    """Every feature at ``layers`` that fires somewhere on ``prompts``."""
    read = read_features(ctx.chat_model, ctx.saes, prompts, all_active=layers, reduce="max",
                         batch_size=ctx.config.batch_size)
    return [key for key, fired in zip(read.keys, (read.values > 0).any(0).tolist()) if fired]


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Upstream:
    config = ctx.config.upstream
    sets: PromptSets = inputs["prompt_sets"]
    refusal = refusal_set(inputs)
    layers = upstream_layers(ctx.saes, refusal, None if config.layers == "below_refusal" else config.layers)
    harm = harm_features(ctx.chat_model, ctx.saes, texts(sets.harmful_train), texts(sets.harmless_train), layers,
                         config.k, exclude=refusal, batch_size=ctx.config.batch_size)
    harm_keys = [(f.layer, f.feature) for f in harm]
    prompts = texts(sets.harmful_eval)
    op = FeatureOp("zero") if config.op == "zero" else FeatureOp("scale", config.scale)
    ctx.console.print(f"  {len(harm)} harm features at layers {layers}; effects on {len(prompts)} held-out prompts")
    refusal_layers = sorted({L for L, _ in refusal})
    active = active_features(ctx, prompts, sorted({*layers, *refusal_layers}))
    excluded = [*harm_keys, *refusal]
    forward = _direction(ctx, prompts, harm_keys, refusal, "last", op, active, excluded)
    reverse = _direction(ctx, prompts, refusal, harm_keys, "instruction", FeatureOp("scale", config.scale), active,
                         excluded)
    return Upstream(layers=layers, harm_features=[ScoredKey(layer=f.layer, feature=f.feature, difference=f.score)
                                                   for f in harm],
                    refusal_features=refusal, n_prompts=len(prompts), forward=forward, reverse=reverse, op=config.op,
                    n_edges=config.n_edges)


# --- what it shows ------------------------------------------------------------------------
def _effect_text(effect: Effect) -> str:
    relative = ("n/a" if effect.relative_change is None else
                f"{effect.relative_change:+.1%} [{effect.relative_ci[0]:+.1%}, {effect.relative_ci[1]:+.1%}]")
    return f"{relative}; refusal score {effect.score_change:+.2f} [{effect.score_ci[0]:+.2f}, {effect.score_ci[1]:+.2f}]"


def summary(result: Upstream) -> list[RenderableType]:
    return [(f"Upstream: {len(result.harm_features)} harm features at layers {result.layers}; editing them moves the "
             f"refusal features by {_effect_text(result.forward.edited)}")]


def _rows(result: Upstream) -> list[list[str]]:
    rows = []
    for name, direction in (("harm → refusal features", result.forward),
                            ("refusal → harm features", result.reverse)):
        n_reachable = sum(any(r) for r in zip(*direction.reachable)) if direction.reachable else 0
        n_targets = len(direction.reachable[0]) if direction.reachable else 0
        rows.append([name, _effect_text(direction.edited),
                     " | ".join(_effect_text(e) for e in direction.random) or "–",
                     f"{n_reachable}/{n_targets}"])
    return rows


def fig_graph(result: Upstream, folder: Path, n_edges: int) -> str | None:
    """Harm features (left) → refusal features (right); the strongest single-feature effects."""
    harm, refusal, matrix = result.harm_features, result.refusal_features, result.forward.matrix
    edges = sorted(((abs(matrix[i][j]), i, j) for i in range(len(harm)) for j in range(len(refusal))
                    if result.forward.reachable[i][j] and matrix[i][j] != 0), reverse=True)[:n_edges]
    if not edges:
        return None
    fig, ax = subplots(figsize=(7, max(3.5, 0.32 * max(len(harm), len(refusal)) + 1)))
    y_harm = torch.linspace(1, 0, len(harm)).tolist() if len(harm) > 1 else [0.5]
    y_refusal = torch.linspace(1, 0, len(refusal)).tolist() if len(refusal) > 1 else [0.5]
    strongest = edges[0][0]
    for size, i, j in edges:
        colour = "tab:blue" if matrix[i][j] < 0 else "tab:red"
        ax.plot([0, 1], [y_harm[i], y_refusal[j]], color=colour, lw=0.5 + 4 * size / strongest, alpha=0.7)
    ax.scatter([0] * len(harm), y_harm, color="tab:orange", zorder=3)
    ax.scatter([1] * len(refusal), y_refusal, color="tab:purple", zorder=3)
    for y, f in zip(y_harm, harm):
        ax.text(-0.03, y, f"L{f.layer}:{f.feature}", ha="right", va="center", fontsize=7)
    for y, f in zip(y_refusal, refusal):
        ax.text(1.03, y, f"L{f[0]}:{f[1]}", ha="left", va="center", fontsize=7)
    ax.set_xlim(-0.35, 1.35)
    ax.axis("off")
    ax.set_title(f"Editing one harm feature → change of a refusal feature (top {len(edges)}; blue: down, red: up)")
    return save_figure(fig, folder, "upstream_graph")


def fig_effects(result: Upstream, folder: Path) -> str:
    fig, ax = subplots(figsize=(7, 3.5))
    labels, values, errors = [], [], [[], []]
    for name, direction in (("harm→refusal", result.forward), ("refusal→harm", result.reverse)):
        for label, effect in [(name, direction.edited)] + [(f"{name}\nrandom {i + 1}", e)
                                                           for i, e in enumerate(direction.random)]:
            if effect.relative_change is None:
                continue
            labels.append(label)
            values.append(effect.relative_change)
            errors[0].append(max(0.0, effect.relative_change - effect.relative_ci[0]))
            errors[1].append(max(0.0, effect.relative_ci[1] - effect.relative_change))
    colours = ["tab:red" if "random" not in label else "tab:gray" for label in labels]
    ax.bar(range(len(labels)), values, yerr=errors, capsize=3, color=colours, alpha=0.8)
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("relative change of the read features")
    ax.set_title("Causal effect vs matched random sets (95% bootstrap CI)")
    return save_figure(fig, folder, "upstream_effects")


def report(result: Upstream, inputs: Inputs, figures: Path) -> list[ReportSection]:
    harm = ", ".join(f"L{f.layer}:{f.feature} ({f.difference:+.2f})" for f in result.harm_features)
    text = (f"<p>Harm features at layers {result.layers} (activation difference harmful − harmless on the training "
            f"prompts; refusal features left out): {html.escape(harm)}. Effects on {result.n_prompts} held-out "
            f"harmful prompts; harm features edited by {html.escape(result.op)}, refusal features clamped for the "
            f"reverse. Reachable: the read features above an edited one (only those can move).</p>")
    graph = fig_graph(result, figures, result.n_edges)
    return [ReportSection("Harm features upstream of the refusal features", (
        text + table(_rows(result), ["edit → read", "effect (95% CI)", "matched random sets", "reachable"])
        + img(fig_effects(result, figures), "upstream effects") + img(graph, "upstream graph")))]


STAGE = Stage(
    name="upstream",
    result=Upstream,
    compute=compute,
    reads=("prompt_sets", "attribution"),
    config_sections=("upstream", "seed", "batch_size"),
    summary=summary,
    report=report,
)
