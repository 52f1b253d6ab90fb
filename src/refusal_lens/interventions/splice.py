"""The reference feature intervention: encode with the whole SAE, edit, decode, add the error back.

Tests hold the sparse closed form (``FeatureIntervention``) to it.
"""

from __future__ import annotations

import torch

from refusal_lens.interventions.features import FeatureIntervention


class SpliceFeatureIntervention(FeatureIntervention):
    """Reference implementation: encode with the whole SAE, edit, decode, add the error back."""

    def edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        sae = self.saes[layer]
        acts = sae.encode(x)
        idx = torch.tensor(self.features[layer], device=acts.device)
        edited = acts.clone()
        values = self.op.layer_values(layer, self.features[layer])
        new_values = self.op.apply(acts[..., idx], None if values is None else torch.tensor(values))
        mask = self._mask(layer, x)
        if mask is not None:
            new_values = torch.where(mask.expand_as(new_values), new_values, acts[..., idx])
        edited[..., idx] = new_values
        error = x - sae.decode(acts)
        sae.encode(x)  # normalizing SAEs keep per-input state that decode consumes
        return (sae.decode(edited) + error).to(x.dtype)
