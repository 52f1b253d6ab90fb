"""The slice class of each SAE architecture, chosen from ``sae.cfg.architecture()``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sae_lens import SAE

from refusal_lens.saes.slices.base import SparseSAESlice
from refusal_lens.saes.slices.jumprelu import JumpReLUSlice
from refusal_lens.saes.slices.standard import StandardSlice
from refusal_lens.saes.slices.topk import TopKSlice

SLICE_CLASSES: dict[str, type[SparseSAESlice]] = {
    cls.architecture: cls for cls in (StandardSlice, JumpReLUSlice, TopKSlice)}
SUPPORTED_ARCHITECTURES = tuple(SLICE_CLASSES)


def slice_class(sae: SAE) -> type[SparseSAESlice]:
    architecture = sae.cfg.architecture()
    try:
        return SLICE_CLASSES[architecture]
    except KeyError:
        raise NotImplementedError(f"Feature interventions support {SUPPORTED_ARCHITECTURES} "
                                  f"SAEs; this one is {architecture!r}.") from None


def sparse_slice(sae: SAE, features: Sequence[int], device: torch.device) -> SparseSAESlice:
    """The slice of ``sae`` holding ``features`` on ``device``, of the class its architecture needs."""
    return slice_class(sae)(sae, features, device)
