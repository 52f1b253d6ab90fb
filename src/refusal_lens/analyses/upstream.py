"""Harm features upstream, refusal features downstream [Y25] (METHOD.md §5).

Harm features are SAE features at layers below the refusal features' that separate harmful
from harmless prompts (activation difference, the mean over the instruction's positions) and
are not refusal features. The causal test edits them on held-out harmful prompts and reads
the refusal features at the last prompt position and the refusal score, against random
upstream features that fire on the same prompts, matched in layers; the reverse test edits
the refusal features and reads the harm features. A feature can only move features at higher
layers: pairs in the wrong order are reported as such, never as "no effect".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_lens.activations import FeatureActivations, read_features
from refusal_lens.attribution import ScoredFeature, activation_difference_features
from refusal_lens.interventions import FeatureIntervention, FeatureKey, FeatureOp
from refusal_lens.models import ChatModel
from refusal_lens.progress import make_progress
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores

ZERO = FeatureOp("zero")


def upstream_layers(saes: SAESet, refusal: Sequence[FeatureKey], layers: Sequence[int] | None = None) -> list[int]:
    """SAE layers below the highest refusal-feature layer (or those given, checked)."""
    if layers is not None:
        missing = sorted(set(layers) - set(saes.layers))
        if missing:
            raise ValueError(f"upstream.layers {missing} have no SAE; the SAEs cover {saes.layers}.")
        return sorted(set(layers))
    top = max(L for L, _ in refusal)
    found = [L for L in saes.layers if L < top]
    if not found:
        raise ValueError(f"No SAE layer lies below the refusal features' highest layer {top} (SAE layers "
                         f"{saes.layers}): there is nothing upstream to look for harm features in.")
    return found


def harm_features(chat_model: ChatModel, saes: SAESet, harmful: Sequence[str], harmless: Sequence[str],
                  layers: Sequence[int], k: int, exclude: Sequence[FeatureKey] = (),
                  batch_size: int = 8) -> list[ScoredFeature]:
    """The ``k`` features at ``layers`` with the largest mean activation difference harmful −
    harmless (mean over the instruction's positions), leaving out ``exclude`` (the refusal set)."""
    excluded = {tuple(map(int, f)) for f in exclude}
    ranked = activation_difference_features(chat_model, saes, harmful, harmless, layers=layers,
                                            k=k + len(excluded), batch_size=batch_size)
    return [f for f in ranked if (f.layer, f.feature) not in excluded][:k]


def after_prefix(read: FeatureActivations, prefix_tokens: int) -> torch.Tensor:
    """``[prompts, positions]``: True at each prompt's positions after what the chat template writes
    before the instruction (BOS, system and user-turn headers), as attribution scores them."""
    lengths = read.mask.sum(1, keepdim=True)
    from_right = read.mask.shape[1] - torch.arange(read.mask.shape[1])
    return read.mask & (from_right[None, :] <= lengths - prefix_tokens)


def instruction_mean(read: FeatureActivations, prefix_tokens: int) -> torch.Tensor:
    """``[prompts, features]``: the mean over each prompt's positions after the template's prefix."""
    scored = after_prefix(read, prefix_tokens)
    return (read.values * scored[..., None]).sum(1) / scored.sum(1, keepdim=True).clamp_min(1)


def instruction_max(read: FeatureActivations, prefix_tokens: int) -> torch.Tensor:
    """``[prompts, features]``: the largest activation over each prompt's positions after the prefix."""
    scored = after_prefix(read, prefix_tokens)
    return (read.values * scored[..., None]).amax(1)


@dataclass
class Readout:
    """What an edit is measured by, per prompt."""

    targets: torch.Tensor  # [prompts, targets]
    score: torch.Tensor    # [prompts] refusal score


def read_targets(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], targets: Sequence[FeatureKey],
                 where: str, edit: Sequence[FeatureKey] = (), op: FeatureOp = ZERO,
                 batch_size: int = 16) -> Readout:
    """The targets' activations (``where``: ``last`` position, or the ``instruction`` mean) and the
    refusal score, with ``edit`` edited by ``op`` at every position."""
    interventions = [FeatureIntervention(saes, edit, op)] if edit else []
    if where == "last":
        values = read_features(chat_model, saes, instructions, targets, positions=[-1], interventions=interventions,
                               batch_size=batch_size).values[:, 0]
    elif where == "instruction":
        read = read_features(chat_model, saes, instructions, targets, interventions=interventions,
                             batch_size=batch_size)
        values = instruction_mean(read, chat_model.n_pre_instruction_tokens)
    else:
        raise ValueError(f"Unknown read-out position {where!r}: use 'last' or 'instruction'.")
    score = refusal_scores(chat_model, instructions, batch_size=batch_size, interventions=interventions)
    return Readout(values.double(), score.double())


def reachable(sources: Sequence[FeatureKey], targets: Sequence[FeatureKey]) -> list[bool]:
    """Per target: whether some source sits at a lower layer (only then can editing it move the target)."""
    lowest = min(L for L, _ in sources)
    return [L > lowest for L, _ in targets]


def effect_matrix(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], sources: Sequence[FeatureKey],
                  targets: Sequence[FeatureKey], where: str, op: FeatureOp, base: Readout,
                  batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Editing each source alone: ``[sources, targets]`` mean change of each target's activation,
    and ``[sources]`` mean change of the refusal score (edited − clean, over the prompts)."""
    matrix, score = [], []
    with make_progress() as progress:
        task = progress.add_task("one feature edited at a time", total=len(sources))
        for source in sources:
            edited = read_targets(chat_model, saes, instructions, targets, where, [source], op, batch_size)
            matrix.append((edited.targets - base.targets).mean(0))
            score.append((edited.score - base.score).mean())
            progress.advance(task)
    return torch.stack(matrix), torch.stack(score)


def set_effect(base: Readout, edited: Readout) -> dict[str, torch.Tensor]:
    """Per prompt: the change of the targets' total activation (relative to the clean total; NaN
    where that is 0) and of the refusal score."""
    before, after = base.targets.sum(1), edited.targets.sum(1)
    relative = torch.where(before > 0, (after - before) / before.clamp_min(1e-12), torch.full_like(before, float("nan")))
    return {"relative_change": relative, "score_change": edited.score - base.score}
