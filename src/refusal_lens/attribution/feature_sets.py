"""Feature sets of [Y25] (METHOD.md §5): CosSim+AP and its baselines, as ranked (layer, feature) lists.

- CosSim+AP: attribution scores restricted to the cosine candidates, top k;
- cosine alone: the candidates with the highest cosine with the refusal direction;
- attribution alone: top k over every feature that changed;
- activation difference: top k of mean harmful minus mean harmless activation.

Each is global (mean over prompts) unless a prompt is given, where that makes sense.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from refusal_lens.activations import read_features, residuals
from refusal_lens.attribution.result import FeatureScores, ScoredFeature
from refusal_lens.interventions import Intervention
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.saes import SAESet

DEFAULT_K = 20
READ_BATCH = 8  # prompts a forward pass on the CPU (on a GPU: the largest that fits)


def cossim_ap_features(scores: FeatureScores, candidates: Iterable[Sequence], k: int = DEFAULT_K,
                       prompt: int | None = None) -> list[ScoredFeature]:
    """Top ``k`` of the cosine ``candidates`` (``(layer, feature, ...)`` rows) by attribution
    score; a candidate that never changed scores 0."""
    return scores.restricted(candidates).top(k, prompt, what="cosine candidates")


def attribution_features(scores: FeatureScores, k: int = DEFAULT_K, prompt: int | None = None) -> list[ScoredFeature]:
    """Top ``k`` by attribution score over every feature whose activation changed."""
    return scores.top(k, prompt, what="features that changed")


def cosine_features(candidates: Iterable[Sequence], k: int = DEFAULT_K) -> list[ScoredFeature]:
    """Top ``k`` candidates by cosine, from ``(layer, feature, cosine)`` rows (as the candidates
    stage ranks them, per layer), across layers; ties keep the given order."""
    rows = [(int(c[0]), int(c[1]), float(c[2])) for c in candidates]
    per_prompt = torch.tensor([[c[2] for c in rows]], dtype=torch.float64)
    return FeatureScores([c[:2] for c in rows], per_prompt).top(k, what="cosine candidates")


def activation_difference_features(chat_model: ChatModel, saes: SAESet, harmful: Sequence[str],
                                   harmless: Sequence[str], *, layers: Sequence[int] | None = None,
                                   k: int = DEFAULT_K, batch_size: int | None = None,
                                   skip_prefix: bool = True) -> list[ScoredFeature]:
    """Top ``k`` by mean activation on ``harmful`` minus mean activation on ``harmless``.

    A prompt's activation of a feature is its mean over the prompt's positions, skipping
    what the template writes before the instruction (``skip_prefix``); the mean is over
    prompts. Every active feature of every SAE layer at ``layers`` (default: all) is read.
    """
    layers = list(saes.layers if layers is None else layers)
    harmful_mean = mean_activations(chat_model, saes, harmful, layers, batch_size, skip_prefix)
    harmless_mean = mean_activations(chat_model, saes, harmless, layers, batch_size, skip_prefix)
    keys = sorted({*harmful_mean, *harmless_mean})
    difference = torch.tensor([[harmful_mean.get(key, 0.0) - harmless_mean.get(key, 0.0) for key in keys]],
                              dtype=torch.float64)
    return FeatureScores(keys, difference).top(k, what="active features")


def mean_activations(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], layers: Sequence[int],
                     batch_size: int | None = None, skip_prefix: bool = True) -> dict[tuple[int, int], float]:
    """``{(layer, feature): mean over prompts of the mean over positions}`` for every feature
    active somewhere on ``instructions`` (0 for one active only before the instruction).

    ``batch_size`` None: the largest batch that fits the GPU, ``READ_BATCH`` on the CPU; in a
    data-parallel run the prompts are split over the processes. Each batch is reduced on the
    device: only its active features' sums leave it."""
    if not instructions:
        raise ValueError("No instructions to average feature activations over.")
    layers = sorted({int(L) for L in layers})
    missing = [L for L in layers if L not in saes]
    if missing:
        raise KeyError(f"No SAE at layers {missing}; the SAE set covers {saes.layers}.")
    skipped = chat_model.n_pre_instruction_tokens if skip_prefix else 0

    def batch_sums(chunk: list[str]) -> torch.Tensor:
        return _active_feature_sums(chat_model, saes, chunk, layers, skipped)

    rows = torch.cat(run_batched(chat_model, "mean_activations", list(instructions), batch_sums,
                                 batch_size=batch_size, default=READ_BATCH,
                                 tokens=lambda part: longest_prompt(chat_model, part)))
    keys, inverse = torch.unique(rows[:, :2].long(), dim=0, return_inverse=True)
    total = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, rows[:, 2])
    mean = total / len(instructions)
    return {(int(L), int(i)): float(v) for (L, i), v in zip(keys.tolist(), mean.tolist())}


@torch.no_grad()
def _active_feature_sums(chat_model: ChatModel, saes: SAESet, instructions: list[str], layers: list[int],
                         skipped: int) -> torch.Tensor:
    """``[rows, 3]`` float64 ``(layer, feature, sum over the batch of its mean over the scored
    positions)`` for each feature active (> 0) at some prompt token of the batch."""
    batch = chat_model.tokenize(instructions)
    found = residuals(chat_model, batch, layers)
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1, keepdim=True)
    from_right = mask.shape[1] - torch.arange(mask.shape[1], device=mask.device)
    scored = mask & (from_right[None, :] <= lengths - skipped)  # after the template's opening
    rows = []
    for layer in layers:
        sae = saes[layer]
        hidden = found.pop(layer).to(sae.W_dec.device)
        acts = sae.encode(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:-1], -1)
        acts = acts.masked_fill(~mask.to(acts.device)[..., None], 0)
        active = torch.nonzero(acts.gt(0).any(1).any(0)).flatten()
        values = acts.index_select(-1, active).float()
        weights = scored.to(acts.device)
        per_prompt = (values * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        rows.append(torch.stack([torch.full_like(active, layer).double(), active.double(),
                                 per_prompt.double().sum(0)], dim=1).cpu())
    return torch.cat(rows)


def firing_means(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], features: Sequence[Sequence],
                 batch_size: int | None = None, skip_prefix: bool = True,
                 interventions: Sequence[Intervention] = ()) -> dict[tuple[int, int], float | None]:
    """Each feature's mean activation over the positions where it fires (> 0) on
    ``instructions`` (skipping what the template writes before the instruction; under
    ``interventions`` if given), None for a feature that never fires there: the scale of
    "set to v × its usual activation". ``batch_size`` as ``read_features`` takes it (None: sized
    to the device)."""
    keys = list(dict.fromkeys((int(f[0]), int(f[1])) for f in features))
    skipped = chat_model.n_pre_instruction_tokens if skip_prefix else 0
    read = read_features(chat_model, saes, list(instructions), keys, interventions=interventions,
                         batch_size=batch_size)
    lengths = read.mask.sum(1, keepdim=True)
    from_right = read.mask.shape[1] - torch.arange(read.mask.shape[1])
    scored = read.mask & (from_right[None, :] <= lengths - skipped)
    values = read.values.double() * scored[..., None]
    totals, counts = values.sum((0, 1)), (values > 0).sum((0, 1)).double()
    return {key: (float(total / count) if count else None) for key, total, count in
            zip(keys, totals.tolist(), counts.tolist())}
