"""Harm categories [Y25] (METHOD.md §5): each category's global feature set F*, the features all
categories share and those specific to one, and what clamping each does.

- ``category_scores``: per-prompt CosSim+AP scores of the cosine candidates on one category's
  prompts (LA-IG or attribution patching, ``refusal_lens.attribution``);
- ``top_k`` / ``split_common_specific``: F* = the top k candidates by mean score; common = the
  intersection over categories; specific = F* minus common;
- ``bootstrap_sets``: intervals for the overlaps, from prompts resampled within each category;
- ``run_outcomes``: a category's held-out prompts under "clamp these, pin those to their clean
  value" (``analyses/pinned.py``), judged by generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from refusal_lens.analyses.pinned import pinned_generate, pinned_refusal_scores
from refusal_lens.attribution import attribute, feature_scores
from refusal_lens.interventions import FeatureKey, FeatureOp
from refusal_lens.judges import Judge
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet
from refusal_lens.stats import bootstrap_interval, rate_with_interval


def category_scores(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], direction: torch.Tensor,
                    candidates: Sequence[FeatureKey], *, method: str = "ig", steps: int = 10,
                    batch_size: int = 8) -> torch.Tensor:
    """``[prompts, len(candidates)]``: each prompt's attribution score of each candidate (0 where
    it did not change), attributed at the candidates' layers only."""
    layers = sorted({int(L) for L, _ in candidates})
    result = attribute(chat_model, saes, instructions, direction, layers=layers, method=method, steps=steps,
                       batch_size=batch_size)
    return feature_scores(result).restricted(candidates).per_prompt


def top_k(candidates: Sequence[FeatureKey], per_prompt: torch.Tensor, k: int,
          rows: np.ndarray | None = None) -> list[FeatureKey]:
    """The ``k`` candidates with the highest mean score over ``rows`` (all prompts by default);
    ties keep the candidates' order, as ``FeatureScores.top`` does."""
    if not 1 <= k <= len(candidates):
        raise ValueError(f"k={k} must be between 1 and the {len(candidates)} cosine candidates.")
    scores = per_prompt if rows is None else per_prompt[torch.as_tensor(rows)]
    order = torch.sort(-scores.mean(0), stable=True).indices[:k]
    return [tuple(map(int, candidates[j])) for j in order.tolist()]


@dataclass(frozen=True)
class CategorySets:
    per_category: dict[str, list[FeatureKey]]  # F*, best first
    common: list[FeatureKey]                   # in every F*, sorted
    specific: dict[str, list[FeatureKey]]      # F* minus common, best first


def split_common_specific(per_category: Mapping[str, Sequence[FeatureKey]]) -> CategorySets:
    """Common = the features of every category's F*; specific = the rest of each F*."""
    if not per_category:
        raise ValueError("No categories to compare.")
    sets = {name: [tuple(map(int, f)) for f in features] for name, features in per_category.items()}
    common = set.intersection(*(set(features) for features in sets.values()))
    return CategorySets(per_category=sets, common=sorted(common),
                        specific={name: [f for f in features if f not in common] for name, features in sets.items()})


def jaccard(a: Sequence[FeatureKey], b: Sequence[FeatureKey]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


@dataclass(frozen=True)
class SetIntervals:
    """95% percentile intervals from prompts resampled within each category."""

    jaccard: dict[str, dict[str, tuple[float, float]]]  # category → category → interval
    common_size: tuple[float, float]
    stability: dict[str, dict[FeatureKey, float]]       # category → feature of F* → share of resamples keeping it


def bootstrap_sets(candidates: Sequence[FeatureKey], scores: Mapping[str, torch.Tensor], k: int, *,
                   n_boot: int = 200, seed: int = 0) -> SetIntervals:
    """Resample each category's prompts (with replacement), recompute every F* and their overlaps."""
    names = list(scores)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        draws.append(split_common_specific({
            name: top_k(candidates, scores[name], k, rng.integers(0, len(scores[name]), len(scores[name])))
            for name in names}))
    observed = split_common_specific({name: top_k(candidates, scores[name], k) for name in names})

    def interval(values: list[float]) -> tuple[float, float]:
        low, high = np.quantile(values, [0.025, 0.975])
        return float(low), float(high)

    return SetIntervals(
        jaccard={a: {b: interval([jaccard(d.per_category[a], d.per_category[b]) for d in draws]) for b in names}
                 for a in names},
        common_size=interval([len(d.common) for d in draws]),
        stability={name: {f: sum(f in set(d.per_category[name]) for d in draws) / n_boot
                          for f in observed.per_category[name]} for name in names})


@dataclass
class Outcomes:
    """One intervention on one category's held-out prompts."""

    scores: list[float]      # refusal score at the last prompt position
    responses: list[str]     # greedy answers
    refused: list[bool]      # the judge's verdicts

    @property
    def answered(self) -> list[bool]:
        return [not r for r in self.refused]

    def asr(self) -> dict:
        """``rate_with_interval`` of the answered prompts (95% Wilson)."""
        return rate_with_interval(self.answered)


def run_outcomes(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], edit: Sequence[FeatureKey],
                 op: FeatureOp, pin: Sequence[FeatureKey], judge: Judge, *, max_new_tokens: int = 64,
                 batch_size: int = 16) -> Outcomes:
    """Clamp ``edit`` with ``op`` while ``pin`` is held at its clean value (METHOD.md §5), on
    every position, generated ones included; score, generate, judge."""
    scores = pinned_refusal_scores(chat_model, saes, instructions, edit, op, pin, batch_size)
    responses = pinned_generate(chat_model, saes, instructions, edit, op, pin, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    verdicts = judge.judge(list(instructions), responses)
    return Outcomes(scores.tolist(), responses, [bool(v.refused) for v in verdicts])


def normalised_asr(outcomes: Outcomes, reference: Outcomes, *, n_boot: int = 1000,
                   seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """ASR over the reference's ASR on the same prompts ([Y25]'s "normalised by all F*"), with a
    paired bootstrap 95% interval; ``None`` where the reference answers nothing."""
    a = np.asarray(outcomes.answered, dtype=float)
    b = np.asarray(reference.answered, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"A normalised ASR needs the same prompts: {len(a)} and {len(b)} outcomes.")
    if not b.sum():
        return None, None, None

    def ratio(rows: np.ndarray) -> float:
        denominator = b[rows].sum()
        return float(a[rows].sum() / denominator) if denominator else float("nan")

    low, high = bootstrap_interval(len(a), ratio, n_boot=n_boot, seed=seed)
    return float(a.sum() / b.sum()), low, high
