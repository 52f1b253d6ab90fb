"""``attribute``: LA-IG (or attribution patching) over the SAE features of every layer asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from refusal_lens.attribution.decomposition import LayerChanges, check_sae, decompose
from refusal_lens.attribution.gradients import (clean_point_gradients, integrated_gradient,
                                                interpolation_points, logits_from_layer)
from refusal_lens.attribution.metric import forward_capturing, metric_from_logits
from refusal_lens.attribution.result import AttributionResult, LayerAttribution
from refusal_lens.interventions import DirectionalAblation
from refusal_lens.models import ChatModel
from refusal_lens.progress import batches
from refusal_lens.saes import SAESet

Method = Literal["ig", "atp"]


@dataclass
class _LayerParts:
    """One layer's per-batch pieces, joined into a ``LayerAttribution`` at the end."""

    prompt: list[torch.Tensor] = field(default_factory=list)
    position: list[torch.Tensor] = field(default_factory=list)
    feature: list[torch.Tensor] = field(default_factory=list)
    delta: list[torch.Tensor] = field(default_factory=list)
    attribution: list[torch.Tensor] = field(default_factory=list)
    error: list[torch.Tensor] = field(default_factory=list)
    m_patched_at_layer: list[torch.Tensor] = field(default_factory=list)

    def add(self, changes: LayerChanges, attention_mask: torch.Tensor, first_prompt: int,
            m_patched_at_layer: torch.Tensor) -> None:
        prompt, column = attention_mask.bool().nonzero(as_tuple=True)  # the real tokens, row-major
        token = changes.token
        self.prompt.append((prompt[token] + first_prompt).cpu())
        self.position.append((column[token] - attention_mask.shape[1]).cpu())
        self.feature.append(changes.feature.cpu())
        self.delta.append(changes.delta.cpu())
        self.attribution.append(changes.attribution.cpu())
        error = torch.zeros(attention_mask.shape, dtype=changes.error.dtype, device=changes.error.device)
        error[prompt, column] = changes.error
        self.error.append(error.cpu())
        self.m_patched_at_layer.append(m_patched_at_layer.cpu())

    def join(self, layer: int, width: int) -> LayerAttribution:
        error = torch.cat([F.pad(e, (width - e.shape[1], 0)) for e in self.error])
        return LayerAttribution(layer, torch.cat(self.prompt), torch.cat(self.position), torch.cat(self.feature),
                                torch.cat(self.delta), torch.cat(self.attribution), error,
                                torch.cat(self.m_patched_at_layer))


def attribute(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], direction: torch.Tensor, *,
              layers: Sequence[int] | None = None, method: Method = "ig", steps: int = 10,
              batch_size: int = 8, refusal_token: int | None = None,
              layer_patched_metric: bool | None = None) -> AttributionResult:
    """Attribute ``m = logit[jailbreak] - logit[refusal]`` to the SAE features at ``layers``
    (default: every layer of ``saes``), per prompt, position and feature (METHOD.md §5).

    "Patched" is directional ablation of ``direction`` at all layers; the jailbreak token is
    each prompt's argmax next token under it; the refusal token is the model's first refusal
    token unless given. ``method="ig"``: integrated gradients one layer at a time, ``steps``
    points ``α = k/steps, k = 0..steps-1`` (``steps=1`` is attribution patching);
    ``method="atp"``: attribution patching at every layer from one backward pass.
    ``layer_patched_metric`` (default: on for ``ig``, off for ``atp``) also runs the layers
    above each SAE layer from its patched residual, for ``m_patched_at_layer`` (NaN when off).
    ``batch_size`` prompts go through together (``× steps`` rows for ``ig``).
    """
    instructions = list(instructions)
    if method not in ("ig", "atp"):
        raise ValueError(f"Unknown attribution method {method!r}: use 'ig' or 'atp'.")
    interpolation_points(steps)  # validates steps
    if not instructions:
        raise ValueError("No instructions to attribute on.")
    layers = _checked_layers(chat_model, saes, layers)
    refusal = chat_model.refusal_token_ids[0] if refusal_token is None else int(refusal_token)
    if layer_patched_metric is None:
        layer_patched_metric = method == "ig"
    ablation = DirectionalAblation(direction)
    parts = {L: _LayerParts() for L in layers}
    m_clean, m_patched, jailbreak, lengths = [], [], [], []
    first = 0
    progress = "attribution" if len(instructions) > batch_size else None
    for chunk in batches(instructions, batch_size, progress):
        batch = chat_model.tokenize(chunk)
        mask = batch["attention_mask"]
        with torch.no_grad():
            patched, logits = forward_capturing(chat_model, batch, layers, [ablation])
        tokens = logits.argmax(-1)
        if method == "ig":
            with torch.no_grad():
                clean, clean_logits = forward_capturing(chat_model, batch, layers)
            clean_metric = metric_from_logits(clean_logits, tokens, refusal)
            grads = None
        else:
            clean, grads, clean_metric = clean_point_gradients(chat_model, batch, layers, tokens, refusal)
        for L in layers:
            grad = (integrated_gradient(chat_model, L, clean[L], patched[L], mask, tokens, refusal, steps)
                    if grads is None else grads.pop(L))
            real = mask.bool()
            changes = decompose(saes[L], clean[L][real], patched[L][real], grad[real])
            parts[L].add(changes, mask, first, _metric_at_layer(chat_model, L, patched[L], mask, tokens, refusal)
                         if layer_patched_metric else torch.full((len(chunk),), float("nan")))
        m_clean.append(clean_metric.cpu())
        m_patched.append(metric_from_logits(logits, tokens, refusal).cpu())
        jailbreak.append(tokens.cpu())
        lengths.append(mask.sum(1).cpu())
        first += len(chunk)
    width = int(torch.cat(lengths).max())
    return AttributionResult(method, steps if method == "ig" else 1, {L: parts[L].join(L, width) for L in layers},
                             torch.cat(m_clean), torch.cat(m_patched), torch.cat(jailbreak), refusal,
                             torch.cat(lengths), chat_model.n_pre_instruction_tokens)


def _checked_layers(chat_model: ChatModel, saes: SAESet, layers: Sequence[int] | None) -> list[int]:
    layers = saes.layers if layers is None else sorted({chat_model.check_layer(L) for L in layers})
    missing = [L for L in layers if L not in saes]
    if missing:
        raise KeyError(f"No SAE at layers {missing}; the SAE set covers {saes.layers}.")
    if not layers:
        raise ValueError("No layers to attribute at.")
    for L in layers:
        check_sae(saes[L], L)
    return layers


@torch.no_grad()
def _metric_at_layer(chat_model: ChatModel, layer: int, patched: torch.Tensor, mask: torch.Tensor,
                     jailbreak: torch.Tensor, refusal: int) -> torch.Tensor:
    return metric_from_logits(logits_from_layer(chat_model, layer, patched, mask), jailbreak, refusal)
