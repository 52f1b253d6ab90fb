"""What a targeted edit needs from training prompts: where features and the refusal direction
stay on harmless prompts, and how far an edit moves the next-token distribution.

- ``feature_thresholds``: per feature, a quantile of its activation over every token of
  harmless prompts (the max at quantile 1): the thresholds of
  ``ThresholdFeatureIntervention``;
- ``projection_thresholds``: per layer, the same quantile of the residual's projection on
  the refusal direction: the thresholds of ``ProjectionGatedFeatureIntervention``;
- ``harmless_activity``: each feature's firing rate and mean activation on harmless prompts,
  the cost the search ranks candidates by;
- ``next_token_kl``: KL(base ‖ edited) of the next-token distribution (heretic's damage metric),
  ``kl_summary`` its mean / median / max and the share of unchanged top-1 tokens.

Never pass evaluation prompts here: thresholds and costs are chosen on training prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_lens.activations import read_features, residuals
from refusal_lens.interventions import FeatureKey
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.saes import SAESet

DEFAULT_BATCH = 16  # prompts a forward pass on the CPU (on a GPU: the largest that fits)


@dataclass(frozen=True)
class TokenValues:
    """Some quantities (features, or layers' projections on a direction) at every token of some prompts."""

    keys: list
    values: torch.Tensor  # [tokens, keys], float32

    def quantile(self, quantile: float) -> dict:
        """``{key: the quantile of its values}`` (quantile 1: the max)."""
        if not 0 <= quantile <= 1:
            raise ValueError(f"A threshold quantile must be in [0, 1], got {quantile}.")
        levels = torch.quantile(self.values, quantile, dim=0)
        return {key: float(levels[j]) for j, key in enumerate(self.keys)}


def feature_values(chat_model: ChatModel, saes: SAESet, features: Sequence[FeatureKey], prompts: Sequence[str], *,
                   batch_size: int | None = None) -> TokenValues:
    """The features' activations at every token (padding left out)."""
    read = read_features(chat_model, saes, prompts, features, batch_size=batch_size)
    return TokenValues([(int(L), int(i)) for L, i in read.keys], read.values[read.mask])


def projection_values(chat_model: ChatModel, direction: torch.Tensor, layers: Sequence[int], prompts: Sequence[str],
                      *, batch_size: int | None = None) -> TokenValues:
    """``x · r̂`` of the residual at each layer, at every token (padding left out)."""
    unit = (direction.float() / direction.float().norm()).to(chat_model.device)
    layers = sorted(int(L) for L in layers)

    def project(chunk: list[str]) -> torch.Tensor:  # [the chunk's tokens, layers]
        batch = chat_model.tokenize(chunk)
        read = residuals(chat_model, batch, layers)
        valid = batch["attention_mask"].bool().to(chat_model.device)
        return torch.stack([(read[L].float() @ unit)[valid] for L in layers], dim=-1).cpu()

    pieces = run_batched(chat_model, "projection_values", list(prompts), project, batch_size=batch_size,
                         default=DEFAULT_BATCH, tokens=lambda part: longest_prompt(chat_model, part))
    return TokenValues(layers, torch.cat(pieces))


def feature_thresholds(chat_model: ChatModel, saes: SAESet, features: Sequence[FeatureKey],
                       harmless: Sequence[str], *, quantile: float = 1.0,
                       batch_size: int | None = None) -> dict[FeatureKey, float]:
    """``{feature: the quantile of its activation over every harmless token}``."""
    return feature_values(chat_model, saes, features, harmless, batch_size=batch_size).quantile(quantile)


def projection_thresholds(chat_model: ChatModel, direction: torch.Tensor, layers: Sequence[int],
                          harmless: Sequence[str], *, quantile: float = 1.0,
                          batch_size: int | None = None) -> dict[int, float]:
    """``{layer: the quantile of x · r̂ over every harmless token at that layer}``."""
    return projection_values(chat_model, direction, layers, harmless, batch_size=batch_size).quantile(quantile)


@dataclass(frozen=True)
class HarmlessActivity:
    """How much each feature fires on harmless prompts, over every token."""

    keys: list[FeatureKey]
    firing_rate: torch.Tensor     # [features]: share of tokens where it is > 0
    mean_activation: torch.Tensor  # [features]: mean over tokens, zeros included

    def cost(self, key: FeatureKey) -> float:
        """The search's ranking key: the feature's firing rate."""
        return float(self.firing_rate[self.keys.index((int(key[0]), int(key[1])))])


def harmless_activity(chat_model: ChatModel, saes: SAESet, features: Sequence[FeatureKey],
                      harmless: Sequence[str], *, batch_size: int | None = None) -> HarmlessActivity:
    read = read_features(chat_model, saes, harmless, features, batch_size=batch_size)
    tokens = read.values[read.mask]
    return HarmlessActivity([(int(L), int(i)) for L, i in read.keys], (tokens > 0).float().mean(0),
                            tokens.mean(0))


def next_token_kl(base_logits: torch.Tensor, edited_logits: torch.Tensor) -> torch.Tensor:
    """``KL(base ‖ edited)`` of the next-token distributions, one value a row, in float32."""
    base = base_logits.float().log_softmax(-1)
    edited = edited_logits.float().log_softmax(-1)
    return (base.exp() * (base - edited)).sum(-1)


def kl_summary(base_logits: torch.Tensor, edited_logits: torch.Tensor) -> dict[str, float]:
    """Mean, median and max of ``next_token_kl``, and the share of rows whose top-1 token is unchanged."""
    kl = next_token_kl(base_logits, edited_logits)
    same = (base_logits.argmax(-1) == edited_logits.argmax(-1)).float()
    return {"mean": kl.mean().item(), "median": kl.median().item(), "max": kl.max().item(),
            "top1_unchanged": same.mean().item(), "n": int(kl.numel())}
