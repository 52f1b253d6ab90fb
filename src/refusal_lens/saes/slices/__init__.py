"""Sparse views of an SAE: what encoding, decoding and editing a chosen subset of its features needs."""

from refusal_lens.saes.slices.architectures import SLICE_CLASSES, SUPPORTED_ARCHITECTURES, slice_class, sparse_slice
from refusal_lens.saes.slices.base import ALIGN, SparseSAESlice
from refusal_lens.saes.slices.cache import cached_slice, clear_slice_cache
from refusal_lens.saes.slices.jumprelu import JumpReLUSlice
from refusal_lens.saes.slices.standard import StandardSlice
from refusal_lens.saes.slices.topk import TopKSlice

__all__ = [
    "ALIGN", "JumpReLUSlice", "SLICE_CLASSES", "SUPPORTED_ARCHITECTURES", "SparseSAESlice", "StandardSlice",
    "TopKSlice", "cached_slice", "clear_slice_cache", "slice_class", "sparse_slice",
]
