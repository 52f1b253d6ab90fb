"""The evaluation's targeted methods: the minimal shared set edited where it is needed only.

- ``minimal_shared_prompt`` / ``_post_instruction`` / ``_generated``: edited at those positions
  only (``interventions/positions.py``);
- ``minimal_shared_above_harmless``: each feature edited only where it fires above a quantile
  of its activations on harmless training prompts;
- ``minimal_shared_high_projection``: the features of layer L edited only where the residual's
  projection on the run's refusal direction exceeds a quantile of its values on harmless
  training prompts (``interventions/conditional.py``).

Each method's edit is chosen on the validation split, never on the evaluation prompts: its
clamp-multiply factor from ``evaluation.targeted_scales`` (0: zero-ablation; [Y25] uses −1
and −3) and, for a condition, its quantile from ``evaluation.threshold_quantiles``. The rule:
the candidate with the lowest next-token KL on ``harmless_val`` among those whose edit flips
at least ``evaluation.min_val_flip`` of ``harmful_val`` (refusal score < 0); when none does,
the one flipping most (then the lowest KL). Ties keep the first candidate in config order. A
generated-only edit leaves the last prompt position alone, so the validation scores cannot
tell its candidates apart: it keeps the first factor. Every candidate's scores are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, Field

from refusal_lens.interventions import (
    FeatureKey,
    FeatureOp,
    Intervention,
    ProjectionGatedFeatureIntervention,
    ScopedFeatureIntervention,
    ThresholdFeatureIntervention,
)
from refusal_lens.pipeline.direction import DIRECTION_FILE
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.stage import RunContext
from refusal_lens.report import ReportSection, table
from refusal_lens.scoring import last_position_logits, refusal_score_from_logits
from refusal_lens.targeting import TokenValues, feature_values, next_token_kl, projection_values

SCOPES = ("prompt", "post_instruction", "generated")
CONDITIONS = {"minimal_shared_above_harmless": "feature_threshold",
              "minimal_shared_high_projection": "direction_projection"}


def scale_op(scale: float) -> FeatureOp:
    """Clamp-multiply by ``scale``; 0 is zero-ablation (the same edit, ``x - f d``)."""
    return FeatureOp("zero") if scale == 0 else FeatureOp("scale", float(scale))


class CandidateTried(BaseModel):
    scale: float = Field(description="clamp-multiply factor (0: zero-ablation)")
    quantile: float | None = Field(description="of the harmless training prompts' values (conditions only)")
    val_flip_rate: float | None = Field(description="share of `prompt_sets.harmful_val` with a refusal score < 0 "
                                                    "under the edit (null: not scored, a generated-only edit)")
    val_kl: float | None = Field(description="mean next-token KL on `prompt_sets.harmless_val`, base vs edited")


class TargetedChoice(BaseModel):
    positions: str = Field(description="the scope: all, prompt, post_instruction or generated")
    condition: str | None = Field(description="`feature_threshold`, `direction_projection` or null")
    scale: float = Field(description="the clamp-multiply factor chosen (0: zero-ablation)")
    quantile: float | None = Field(description="the quantile chosen (conditions only)")
    thresholds: dict[str, float] = Field(description="`layer:feature` (feature thresholds) or `layer` "
                                                     "(projection thresholds) → value; empty for a scope")
    tried: list[CandidateTried] = Field(description="every candidate, in config order")


@dataclass
class TargetedMethods:
    interventions: dict[str, list[Intervention]] = field(default_factory=dict)
    choices: dict[str, TargetedChoice] = field(default_factory=dict)


def choose(tried: Sequence[CandidateTried], min_flip: float) -> int:
    """The candidate with the lowest validation KL among those flipping ``min_flip``; else the
    one flipping most, then the lowest KL; the first of ties."""
    order = range(len(tried))
    passing = [j for j in order if tried[j].val_flip_rate >= min_flip - 1e-9]
    if passing:
        return min(passing, key=lambda j: tried[j].val_kl)
    return min(order, key=lambda j: (-tried[j].val_flip_rate, tried[j].val_kl))


class _Validation:
    """Scores candidate edits on the validation split."""

    def __init__(self, ctx: RunContext, sets: PromptSets):
        self.ctx, self.sets = ctx, sets
        self.base = last_position_logits(ctx.chat_model, texts(sets.harmless_val))  # unedited

    def score(self, edit: Intervention) -> tuple[float, float]:
        chat = self.ctx.chat_model
        harmful = last_position_logits(chat, texts(self.sets.harmful_val), [edit])
        flips = (refusal_score_from_logits(harmful, chat.refusal_token_ids) < 0).float().mean().item()
        harmless = last_position_logits(chat, texts(self.sets.harmless_val), [edit])
        return flips, next_token_kl(self.base, harmless).mean().item()


def _pick(validation: _Validation, candidates: list[tuple[float, float | None]],
          make_edit: Callable[[float, float | None], Intervention], min_flip: float,
          score: bool = True) -> tuple[Intervention, int, list[CandidateTried]]:
    tried = []
    for scale, quantile in candidates:
        flips, kl = validation.score(make_edit(scale, quantile)) if score else (None, None)
        tried.append(CandidateTried(scale=scale, quantile=quantile, val_flip_rate=flips, val_kl=kl))
    j = choose(tried, min_flip) if score else 0
    return make_edit(*candidates[j]), j, tried


def _keyed(thresholds: dict) -> dict[str, float]:
    return {(f"{k[0]}:{k[1]}" if isinstance(k, tuple) else str(k)): float(v) for k, v in thresholds.items()}


def targeted_methods(ctx: RunContext, sets: PromptSets, direction: torch.Tensor,
                     minimal: Sequence[FeatureKey]) -> TargetedMethods:
    """The minimal set under each scope and condition, each edit chosen on validation (none when
    the set is empty)."""
    out = TargetedMethods()
    if not minimal:
        return out
    config, saes = ctx.config.evaluation, ctx.saes
    ctx.console.print("  choosing the targeted edits on validation prompts")
    validation = _Validation(ctx, sets)
    scales = [(s, None) for s in config.targeted_scales]
    for scope in SCOPES:
        edit, j, tried = _pick(validation, scales,
                               lambda s, _q, scope=scope: ScopedFeatureIntervention(saes, minimal, scale_op(s),
                                                                                    scope=scope),
                               config.min_val_flip, score=scope != "generated")
        name = f"minimal_shared_{scope}"
        out.interventions[name] = [edit]
        out.choices[name] = TargetedChoice(positions=scope, condition=None, scale=tried[j].scale, quantile=None,
                                           thresholds={}, tried=tried)
    harmless = texts(sets.harmless_train)
    grid = [(s, q) for s in config.targeted_scales for q in config.threshold_quantiles]
    values: dict[str, TokenValues] = {
        "feature_threshold": feature_values(ctx.chat_model, saes, minimal, harmless, batch_size=ctx.config.batch_size),
        "direction_projection": projection_values(ctx.chat_model, direction, sorted({L for L, _ in minimal}),
                                                  harmless, batch_size=ctx.config.batch_size)}
    makers = {
        "feature_threshold": lambda s, q: ThresholdFeatureIntervention(
            saes, minimal, scale_op(s), thresholds=values["feature_threshold"].quantile(q)),
        "direction_projection": lambda s, q: ProjectionGatedFeatureIntervention(
            saes, minimal, scale_op(s), direction=direction, thresholds=values["direction_projection"].quantile(q)),
    }
    for name, condition in CONDITIONS.items():
        edit, j, tried = _pick(validation, grid, makers[condition], config.min_val_flip)
        out.interventions[name] = [edit]
        out.choices[name] = TargetedChoice(
            positions="all", condition=condition, scale=tried[j].scale, quantile=tried[j].quantile,
            thresholds=_keyed(values[condition].quantile(tried[j].quantile)), tried=tried)
    return out


def file_fields(choice: TargetedChoice | None) -> dict:
    """What ``save_feature_set`` needs besides the features to write a targeted method's file."""
    if choice is None:
        return {}
    fields: dict = {"op": scale_op(choice.scale), "positions": choice.positions}
    if choice.condition == "feature_threshold":
        fields["feature_thresholds"] = {tuple(int(v) for v in key.split(":")): t for key, t in choice.thresholds.items()}
    elif choice.condition == "direction_projection":
        fields["projection"] = {"direction": f"../{DIRECTION_FILE}",
                                "thresholds": {int(L): t for L, t in choice.thresholds.items()}}
    return fields


def _edit_name(scale: float, quantile: float | None) -> str:
    edit = "zero" if scale == 0 else f"×{scale:g}"
    return edit if quantile is None else f"{edit}, q {quantile:g}"


def report_section(choices: dict[str, TargetedChoice]) -> list[ReportSection]:
    """How each targeted edit was chosen: every candidate's validation scores, the chosen one marked."""
    if not choices:
        return []
    rows = []
    for name, choice in choices.items():
        for row in choice.tried:
            chosen = row.scale == choice.scale and row.quantile == choice.quantile
            scored = row.val_flip_rate is not None
            rows.append([name if chosen else "", choice.positions, choice.condition or "–",
                         _edit_name(row.scale, row.quantile), f"{row.val_flip_rate:.0%}" if scored else "–",
                         f"{row.val_kl:.4f}" if scored else "–", "chosen" if chosen else ""])
    return [ReportSection("Targeted edits: chosen on validation prompts", (
        "<p>Each targeted method is the minimal shared set edited at some positions or under a condition; its "
        "clamp-multiply factor (and a condition's quantile of harmless training values) is the candidate with the "
        "lowest next-token KL on the harmless validation prompts among those flipping enough harmful validation "
        "prompts (evaluation.min_val_flip). Evaluation prompts play no part.</p>"
        + table(rows, ["method", "positions", "condition", "edit", "harmful val flipped", "harmless val KL", ""])))]
