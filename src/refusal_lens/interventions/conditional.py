"""Conditional feature edits: act only at the tokens where a condition holds (METHOD.md §3).

- ``ThresholdFeatureIntervention``: feature ``i`` is edited only where ``f_i(x) > t_i``. With
  ``t_i`` above what the feature reaches on harmless prompts, a harmless prompt is left as
  it is while a harmful one, where the feature fires harder, is edited.
- ``ProjectionGatedFeatureIntervention``: every feature of layer ``L`` is edited only at the
  tokens where the residual's projection on the refusal direction, ``x · r̂``, exceeds
  ``θ_L``.

Both read the condition from the residual arriving at the edited layer (lower layers'
edits in effect), and both take a position scope (``positions.py``), so a condition and a
scope combine. The thresholds come from training prompts (``refusal_lens.targeting``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp
from refusal_lens.interventions.positions import PositionScope, ScopedFeatureIntervention
from refusal_lens.saes.slices import SparseSAESlice


class _GatedFeatureIntervention(ScopedFeatureIntervention):
    """A scoped feature edit whose mask is multiplied by a per-token (or per-token-and-feature) gate."""

    def gate(self, layer: int, x: torch.Tensor, sparse: SparseSAESlice) -> torch.Tensor:
        """Bool ``[batch, seq, n or 1]``: where the edit may act."""
        raise NotImplementedError

    def edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if self._columns is None:
            return x
        sparse = self.slice_for(layer, x.device)
        gate = self.gate(layer, x, sparse).to(sparse.dtype)
        if gate.shape[-1] == sparse.n < sparse.width:
            gate = F.pad(gate, (0, sparse.width - sparse.n))
        mask = self._device_mask(layer, x, sparse)
        return sparse.edit(x, self.op.kind, self.op.value, gate if mask is None else gate * mask)


class ThresholdFeatureIntervention(_GatedFeatureIntervention):
    """Edit feature ``i`` only at the tokens where its activation exceeds ``thresholds[i]``.

    ``thresholds``: one value for every feature, or ``{(layer, feature): value}`` covering
    every feature edited.
    """

    def __init__(self, saes, features: Iterable[FeatureKey] | Mapping[int, Sequence[int]],
                 op: FeatureOp | None = None, *, thresholds: float | Mapping[FeatureKey, float],
                 scope: PositionScope = "all", row_masks: Mapping[int, torch.Tensor] | None = None):
        super().__init__(saes, features, op, scope=scope, row_masks=row_masks)
        if isinstance(thresholds, Mapping):
            given = {(int(L), int(i)): float(t) for (L, i), t in thresholds.items()}
            missing = [(L, i) for L, idx in self.features.items() for i in idx if (L, i) not in given]
            if missing:
                raise ValueError(f"No threshold for features {missing[:5]}: give one for every feature edited.")
        else:
            given = {(L, i): float(thresholds) for L, idx in self.features.items() for i in idx}
        self.thresholds = {L: torch.tensor([given[(L, i)] for i in idx]) for L, idx in self.features.items()}
        self._on_device: dict[tuple[int, torch.device], torch.Tensor] = {}

    def gate(self, layer: int, x: torch.Tensor, sparse: SparseSAESlice) -> torch.Tensor:
        key = (layer, x.device)
        if key not in self._on_device:
            self._on_device[key] = self.thresholds[layer].to(x.device)
        acts, _ = sparse.encode(x)
        return acts > self._on_device[key].to(acts.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "condition": "feature_above_threshold",
                "thresholds": [float(t) for L in self.features for t in self.thresholds[L]]}


class ProjectionGatedFeatureIntervention(_GatedFeatureIntervention):
    """Edit the features of layer ``L`` only at the tokens where ``x · r̂ > thresholds[L]``.

    ``direction``: ``[d_model]`` (normalised here); ``thresholds``: one value for every layer,
    or ``{layer: value}`` covering every edited layer.
    """

    def __init__(self, saes, features: Iterable[FeatureKey] | Mapping[int, Sequence[int]],
                 op: FeatureOp | None = None, *, direction: torch.Tensor, thresholds: float | Mapping[int, float],
                 scope: PositionScope = "all", row_masks: Mapping[int, torch.Tensor] | None = None):
        super().__init__(saes, features, op, scope=scope, row_masks=row_masks)
        norm = direction.detach().float().norm()
        if direction.dim() != 1 or not torch.isfinite(norm) or norm == 0:
            raise ValueError("The gating direction must be one non-zero, finite vector.")
        self.unit = direction.detach().float() / norm
        if isinstance(thresholds, Mapping):
            self.thresholds = {int(L): float(t) for L, t in thresholds.items()}
            missing = [L for L in self.features if L not in self.thresholds]
            if missing:
                raise ValueError(f"No projection threshold for layers {missing}: give one for every edited layer.")
        else:
            self.thresholds = {L: float(thresholds) for L in self.features}
        self._units: dict[torch.device, torch.Tensor] = {}

    def gate(self, layer: int, x: torch.Tensor, sparse: SparseSAESlice) -> torch.Tensor:
        unit = self._units.get(x.device)
        if unit is None:
            unit = self._units[x.device] = self.unit.to(x.device)
        return (x.float() @ unit > self.thresholds[layer]).unsqueeze(-1)

    def describe(self) -> dict:
        return {**super().describe(), "condition": "direction_projection_above_threshold",
                "thresholds": {str(L): t for L, t in self.thresholds.items()}}
