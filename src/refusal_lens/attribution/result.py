"""What an attribution run returns, and the per-feature scores read from it.

Positions count from the right (-1 = last prompt token, METHOD.md §0). A prompt's score for
a feature is its attribution summed over the scored positions and divided by their number
(the mean over positions, a position where the feature did not change counting as 0); the
scored positions skip BOS, the system header and the user-turn header, everything the chat
template writes before the user's instruction. The global score is the mean over prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from refusal_lens.interventions import FeatureKey


class ScoredFeature(NamedTuple):
    layer: int
    feature: int
    score: float


@dataclass
class LayerAttribution:
    """Attributions at one SAE layer: one entry per (prompt, position, feature) whose
    activation differs between clean and patched."""

    layer: int
    prompt: torch.Tensor        # [n] prompt index
    position: torch.Tensor      # [n] counted from the right, -1 = last prompt token
    feature: torch.Tensor       # [n]
    delta: torch.Tensor         # [n] f_patched - f_clean
    attribution: torch.Tensor   # [n] delta * mean_α ∂m/∂f
    error: torch.Tensor         # [prompts, width] the error term's share, right-aligned, 0 on padding
    m_patched_at_layer: torch.Tensor  # [prompts] the metric with only this layer patched (NaN: not computed)

    def of_prompt(self, prompt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(position, feature, attribution)`` of one prompt's changed features."""
        keep = self.prompt == prompt
        return self.position[keep], self.feature[keep], self.attribution[keep]

    def total(self) -> torch.Tensor:
        """Per prompt, the features' attributions plus the error term's share: the integrated-
        gradients estimate of ``m_patched_at_layer - m_clean``."""
        features = torch.zeros_like(self.error[:, 0]).index_add_(0, self.prompt, self.attribution)
        return features + self.error.sum(1)


@dataclass
class AttributionResult:
    """Attribution of the metric to SAE features at every layer attributed.

    ``method`` is ``"ig"`` (integrated gradients per layer, ``steps`` points ``α_k = k/steps``,
    ``k = 0 .. steps-1``) or ``"atp"`` (attribution patching: the gradient at the clean point).
    """

    method: str
    steps: int
    layers: dict[int, LayerAttribution]
    m_clean: torch.Tensor          # [prompts]
    m_patched: torch.Tensor        # [prompts] under directional ablation at all layers
    jailbreak_token: torch.Tensor  # [prompts] argmax non-refusal next token under directional ablation
    refusal_token: int
    lengths: torch.Tensor          # [prompts] prompt tokens
    prefix_tokens: int             # tokens the template writes before the instruction

    @property
    def n_prompts(self) -> int:
        return len(self.lengths)

    def scored_counts(self, skip_prefix: bool = True) -> torch.Tensor:
        """Per prompt, how many positions (from the right) its scores average over."""
        return self.lengths - self.prefix_tokens if skip_prefix else self.lengths

    def describe(self) -> dict:
        return {"method": self.method, "steps": self.steps,
                "alphas": "k/steps for k = 0..steps-1" if self.method == "ig" else "0 (clean point)",
                "layers": sorted(self.layers), "refusal_token": self.refusal_token,
                "jailbreak_token": "argmax under directional ablation, refusal tokens excluded"}


@dataclass(frozen=True)
class FeatureScores:
    """Per-prompt scores of features, ``per_prompt[:, j]`` for ``keys[j]``; a feature that is
    not a key scored 0 everywhere."""

    keys: list[FeatureKey]
    per_prompt: torch.Tensor  # [prompts, len(keys)]

    def mean(self) -> torch.Tensor:
        """The global score: the mean over prompts."""
        return self.per_prompt.mean(0)

    def restricted(self, features: Iterable[Sequence]) -> FeatureScores:
        """The columns of ``features`` (pairs or ``(layer, feature, ...)`` rows), in their order."""
        column = {key: j for j, key in enumerate(self.keys)}
        keys = list(dict.fromkeys((int(f[0]), int(f[1])) for f in features))
        values = torch.zeros((self.per_prompt.shape[0], len(keys)), dtype=self.per_prompt.dtype)
        found = [(j, column[key]) for j, key in enumerate(keys) if key in column]
        if found:
            to, source = map(list, zip(*found))
            values[:, to] = self.per_prompt[:, source]
        return FeatureScores(keys, values)

    def top(self, k: int = 20, prompt: int | None = None, what: str = "features") -> list[ScoredFeature]:
        """The ``k`` highest scores, globally or for one prompt; ties keep the keys' order."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        if k > len(self.keys):
            raise ValueError(f"k={k} is larger than the {len(self.keys)} {what} to choose from.")
        scores = self.mean() if prompt is None else self.per_prompt[prompt]
        order = torch.sort(-scores, stable=True).indices[:k]
        return [ScoredFeature(*self.keys[j], float(scores[j])) for j in order.tolist()]


def feature_scores(result: AttributionResult, layers: Sequence[int] | None = None, *,
                   skip_prefix: bool = True) -> FeatureScores:
    """Every changed feature's score per prompt: attribution averaged over the scored positions."""
    counts = result.scored_counts(skip_prefix)
    keys: list[FeatureKey] = []
    rows, columns, values = [], [], []
    for layer in sorted(result.layers) if layers is None else layers:
        entries = result.layers[layer]
        keep = -entries.position <= counts[entries.prompt]
        prompt = entries.prompt[keep]
        features, column = torch.unique(entries.feature[keep], return_inverse=True)
        rows.append(prompt)
        columns.append(column + len(keys))
        values.append(entries.attribution[keep] / counts[prompt])
        keys += [(layer, i) for i in features.tolist()]
    dtype = values[0].dtype if values else torch.float32
    per_prompt = torch.zeros((result.n_prompts, len(keys)), dtype=dtype)
    if keys:
        per_prompt.index_put_((torch.cat(rows), torch.cat(columns)), torch.cat(values), accumulate=True)
    return FeatureScores(keys, per_prompt)
