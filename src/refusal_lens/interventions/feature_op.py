"""What a feature intervention does to its features, and how feature sets are keyed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

FeatureKey = tuple[int, int]  # (layer, feature index)


@dataclass(frozen=True)
class FeatureOp:
    """What to do to the features: ``zero``, ``scale`` by ``value`` or ``set`` to ``value``."""

    kind: Literal["zero", "scale", "set"] = "zero"
    value: float = 0.0

    def __post_init__(self):
        if self.kind not in ("zero", "scale", "set"):
            raise ValueError(f"Unknown feature operation {self.kind!r}: use zero, scale or set.")

    def apply(self, acts: torch.Tensor) -> torch.Tensor:
        """The edited activations, for the full splice."""
        if self.kind == "zero":
            return torch.zeros_like(acts)
        if self.kind == "scale":
            return self.value * acts
        return torch.full_like(acts, self.value)

    def describe(self) -> dict:
        return {"kind": self.kind, "value": self.value}


def group_by_layer(features: Iterable[FeatureKey] | Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """``{layer: sorted unique feature indices}`` from pairs or a mapping."""
    by_layer: dict[int, set[int]] = {}
    items = ((L, i) for L, idx in features.items() for i in idx) if isinstance(features, Mapping) else features
    for layer, feature in items:
        by_layer.setdefault(int(layer), set()).add(int(feature))
    return {L: sorted(by_layer[L]) for L in sorted(by_layer)}
