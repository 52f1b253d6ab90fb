"""Slices reused while their SAE and its weights are unchanged, held weakly."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
from sae_lens import SAE

from refusal_lens.saes.slices.architectures import slice_class
from refusal_lens.saes.slices.base import SparseSAESlice

_SLICE_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
SLICE_CACHE_SIZE = 256


def cached_slice(sae: SAE, features: Sequence[int], device: torch.device) -> SparseSAESlice:
    """``sparse_slice(sae, features, device)``, reused while ``sae`` and its weights are unchanged.

    Searches build many interventions over the same features; a slice costs a dozen small
    kernels per layer to build. Entries hold the SAE weakly and are checked against the
    in-place version counters of its parameters.
    """
    cls = slice_class(sae)
    if not cls.cacheable:
        return cls(sae, features, device)
    key = (id(sae), tuple(features), str(device))
    versions = tuple(p._version for p in sae.parameters())
    entry = _SLICE_CACHE.get(key)
    if entry is not None and entry[0]() is sae and entry[1] == versions:
        _SLICE_CACHE.move_to_end(key)
        return entry[2]
    sparse = cls(sae, features, device)
    _SLICE_CACHE[key] = (weakref.ref(sae), versions, sparse)
    while len(_SLICE_CACHE) > SLICE_CACHE_SIZE:
        _SLICE_CACHE.popitem(last=False)
    return sparse


def clear_slice_cache() -> None:
    """Forget every cached slice (a benchmark timing slice construction wants no hits)."""
    _SLICE_CACHE.clear()
