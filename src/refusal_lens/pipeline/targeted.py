"""The evaluation's targeted methods: the minimal shared set edited where it is needed only.

- ``minimal_shared_prompt`` / ``_post_instruction`` / ``_generated``: zeroed at those positions
  only (``interventions/positions.py``);
- ``minimal_shared_above_harmless``: each feature zeroed only where it fires above a quantile
  of its activations on harmless training prompts;
- ``minimal_shared_high_projection``: the features of layer L zeroed only where the residual's
  projection on the run's refusal direction exceeds a quantile of its values on harmless
  training prompts (``interventions/conditional.py``).

The quantile of each condition is chosen on the validation split, never on the evaluation
prompts: from ``evaluation.threshold_quantiles``, the highest (the edit that touches least)
whose edit still flips ``evaluation.min_val_flip`` of the harmful validation prompts; when none
does, the one that flips most (the lowest of ties). Every candidate's validation flip rate and
harmless validation KL are kept in the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, Field

from refusal_lens.interventions import (
    FeatureKey,
    Intervention,
    ProjectionGatedFeatureIntervention,
    ScopedFeatureIntervention,
    ThresholdFeatureIntervention,
)
from refusal_lens.pipeline.direction import DIRECTION_FILE
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.stage import RunContext
from refusal_lens.saes import SAESet
from refusal_lens.scoring import last_position_logits, refusal_score_from_logits
from refusal_lens.targeting import feature_values, next_token_kl, projection_values

SCOPES = ("prompt", "post_instruction", "generated")


class QuantileTried(BaseModel):
    quantile: float = Field(description="of the harmless training prompts' values")
    val_flip_rate: float = Field(description="share of `prompt_sets.harmful_val` with a refusal score < 0 under the edit")
    val_kl: float = Field(description="mean next-token KL on `prompt_sets.harmless_val`, base vs edited")


class ConditionChoice(BaseModel):
    condition: str = Field(description="`feature_threshold` or `direction_projection`")
    quantile: float = Field(description="the quantile chosen on validation")
    tried: list[QuantileTried] = Field(description="every quantile of `evaluation.threshold_quantiles`")
    thresholds: dict[str, float] = Field(description="`layer:feature` (feature thresholds) or `layer` "
                                                     "(projection thresholds) → value")


@dataclass
class TargetedMethods:
    interventions: dict[str, list[Intervention]] = field(default_factory=dict)
    choices: dict[str, ConditionChoice] = field(default_factory=dict)


def _val_scores(ctx: RunContext, sets: PromptSets, edit: Intervention, base_harmless: torch.Tensor) -> tuple[float, float]:
    """Flip rate on harmful validation prompts and mean KL on harmless ones, under ``edit``."""
    harmful = last_position_logits(ctx.chat_model, texts(sets.harmful_val), [edit])
    flips = (refusal_score_from_logits(harmful, ctx.chat_model.refusal_token_ids) < 0).float().mean().item()
    harmless = last_position_logits(ctx.chat_model, texts(sets.harmless_val), [edit])
    return flips, next_token_kl(base_harmless, harmless).mean().item()


def choose_quantile(quantiles: Sequence[float], scores: Sequence[tuple[float, float]], min_flip: float) -> int:
    """Index of the highest quantile that flips at least ``min_flip``; else of the one flipping most
    (the lowest quantile among ties)."""
    order = sorted(range(len(quantiles)), key=lambda j: -quantiles[j])
    passing = [j for j in order if scores[j][0] >= min_flip - 1e-9]
    if passing:
        return passing[0]
    best = max(flip for flip, _ in scores)
    return [j for j in order if scores[j][0] >= best - 1e-9][-1]


def _choose(ctx: RunContext, sets: PromptSets, condition: str, thresholds_at: Callable[[float], dict],
            make_edit: Callable[[dict], Intervention]) -> tuple[Intervention, ConditionChoice]:
    config = ctx.config.evaluation
    quantiles = list(config.threshold_quantiles)
    base = last_position_logits(ctx.chat_model, texts(sets.harmless_val))
    candidates = [thresholds_at(q) for q in quantiles]
    edits = [make_edit(t) for t in candidates]
    scores = [_val_scores(ctx, sets, edit, base) for edit in edits]
    j = choose_quantile(quantiles, scores, config.min_val_flip)
    keyed = {(f"{k[0]}:{k[1]}" if isinstance(k, tuple) else str(k)): v for k, v in candidates[j].items()}
    tried = [QuantileTried(quantile=q, val_flip_rate=f, val_kl=kl) for q, (f, kl) in zip(quantiles, scores)]
    return edits[j], ConditionChoice(condition=condition, quantile=quantiles[j], tried=tried, thresholds=keyed)


def targeted_methods(ctx: RunContext, sets: PromptSets, direction: torch.Tensor,
                     minimal: Sequence[FeatureKey]) -> TargetedMethods:
    """The minimal set under each scope and condition (none when it is empty)."""
    out = TargetedMethods()
    if not minimal:
        return out
    saes: SAESet = ctx.saes
    for scope in SCOPES:
        out.interventions[f"minimal_shared_{scope}"] = [ScopedFeatureIntervention(saes, minimal, scope=scope)]
    harmless = texts(sets.harmless_train)
    ctx.console.print("  choosing the conditional edits' thresholds on validation prompts")
    values = feature_values(ctx.chat_model, saes, minimal, harmless, batch_size=ctx.config.batch_size)
    edit, choice = _choose(ctx, sets, "feature_threshold", values.quantile,
                           lambda t: ThresholdFeatureIntervention(saes, minimal, thresholds=t))
    out.interventions["minimal_shared_above_harmless"] = [edit]
    out.choices["minimal_shared_above_harmless"] = choice
    layers = sorted({layer for layer, _ in minimal})
    values = projection_values(ctx.chat_model, direction, layers, harmless, batch_size=ctx.config.batch_size)
    edit, choice = _choose(ctx, sets, "direction_projection", values.quantile,
                           lambda t: ProjectionGatedFeatureIntervention(saes, minimal, direction=direction,
                                                                        thresholds=t))
    out.interventions["minimal_shared_high_projection"] = [edit]
    out.choices["minimal_shared_high_projection"] = choice
    return out


def file_fields(method: str, choices: dict[str, ConditionChoice]) -> dict:
    """What ``save_feature_set`` needs besides the features to write ``method``'s file."""
    for scope in SCOPES:
        if method == f"minimal_shared_{scope}":
            return {"positions": scope}
    choice = choices.get(method)
    if choice is None:
        return {}
    if choice.condition == "feature_threshold":
        return {"feature_thresholds": {tuple(int(v) for v in key.split(":")): t for key, t in choice.thresholds.items()}}
    return {"projection": {"direction": f"../{DIRECTION_FILE}",
                           "thresholds": {int(L): t for L, t in choice.thresholds.items()}}}

