"""Random feature sets matched to a reference set: the controls every analysis is compared with."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence

from refusal_lens.interventions import FeatureKey
from refusal_lens.saes import SAESet


def matched_random_sets(saes: SAESet, reference: Sequence[FeatureKey], n_sets: int, seed: int) -> list[list[FeatureKey]]:
    """``n_sets`` random sets with as many features at each layer as ``reference``, none of its own."""
    per_layer = Counter(layer for layer, _ in reference)
    excluded = {tuple(f) for f in reference}
    sets = []
    for k in range(n_sets):
        rng = random.Random(seed * 1000 + k)
        chosen = []
        for layer, count in sorted(per_layer.items()):
            width = saes[layer].cfg.d_sae
            pool = [i for i in range(width) if (layer, i) not in excluded]
            chosen += [(layer, i) for i in sorted(rng.sample(pool, min(count, len(pool))))]
        sets.append(chosen)
    return sets


def matched_active_sets(active: Iterable[FeatureKey], reference: Sequence[FeatureKey], n_sets: int, seed: int,
                        exclude: Iterable[FeatureKey] = ()) -> list[list[FeatureKey]]:
    """Random sets drawn from ``active`` features (those that fire on the prompts at hand), as many
    at each layer as ``reference``, none of ``reference`` or ``exclude``: a control whose edit
    does something, unlike a random feature that never fires. A layer with too few active
    features gives all it has."""
    excluded = {tuple(map(int, f)) for f in (*reference, *exclude)}
    pool_by_layer: dict[int, list[int]] = {}
    for layer, i in sorted({(int(L), int(i)) for L, i in active} - excluded):
        pool_by_layer.setdefault(layer, []).append(i)
    per_layer = Counter(int(layer) for layer, _ in reference)
    sets = []
    for k in range(n_sets):
        rng = random.Random(seed * 1000 + k)
        chosen = []
        for layer, count in sorted(per_layer.items()):
            pool = pool_by_layer.get(layer, [])
            chosen += [(layer, i) for i in sorted(rng.sample(pool, min(count, len(pool))))]
        sets.append(chosen)
    return sets
