"""What a feature intervention does to its features, and how feature sets are keyed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

FeatureKey = tuple[int, int]  # (layer, feature index)


@dataclass(frozen=True)
class FeatureOp:
    """What to do to the features: ``zero``, ``scale`` by ``value`` or ``set`` to ``value``.

    ``per_feature`` (``set`` only) gives features their own value, ``((layer, feature), v)``
    pairs; a feature not listed gets ``value``. ``FeatureOp.set_each({...})`` builds one.
    """

    kind: Literal["zero", "scale", "set"] = "zero"
    value: float = 0.0
    per_feature: tuple[tuple[FeatureKey, float], ...] = ()

    def __post_init__(self):
        if self.kind not in ("zero", "scale", "set"):
            raise ValueError(f"Unknown feature operation {self.kind!r}: use zero, scale or set.")
        if self.per_feature and self.kind != "set":
            raise ValueError(f"Per-feature values belong to the 'set' operation, not {self.kind!r}.")

    @classmethod
    def set_each(cls, values: Mapping[FeatureKey, float], default: float = 0.0) -> FeatureOp:
        """Set each feature of ``values`` to its own value (the others in a set to ``default``)."""
        pairs = tuple(sorted(((int(L), int(i)), float(v)) for (L, i), v in values.items()))
        return cls("set", float(default), pairs)

    def layer_values(self, layer: int, features: Sequence[int]) -> list[float] | None:
        """The value of each of ``features`` at ``layer``, or None when they all get ``value``."""
        if not self.per_feature:
            return None
        own = dict(self.per_feature)
        return [own.get((layer, int(i)), self.value) for i in features]

    def apply(self, acts: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """The edited activations, for the full splice; ``values`` (``[n]``) are ``layer_values``."""
        if self.kind == "zero":
            return torch.zeros_like(acts)
        if self.kind == "scale":
            return self.value * acts
        if values is not None:
            return values.to(acts).expand_as(acts).clone()
        return torch.full_like(acts, self.value)

    def describe(self) -> dict:
        described: dict = {"kind": self.kind, "value": self.value}
        if self.per_feature:
            described["per_feature"] = [{"layer": L, "feature": i, "value": v} for (L, i), v in self.per_feature]
        return described


def group_by_layer(features: Iterable[FeatureKey] | Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """``{layer: sorted unique feature indices}`` from pairs or a mapping."""
    by_layer: dict[int, set[int]] = {}
    items = ((L, i) for L, idx in features.items() for i in idx) if isinstance(features, Mapping) else features
    for layer, feature in items:
        by_layer.setdefault(int(layer), set()).add(int(feature))
    return {L: sorted(by_layer[L]) for L in sorted(by_layer)}
