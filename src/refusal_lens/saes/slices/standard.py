"""Slice of a standard (ReLU) SAE: ``f = relu(x E + b_pre)``."""

from __future__ import annotations

import torch
from sae_lens import SAE

from refusal_lens.saes.slices.base import SparseSAESlice


class StandardSlice(SparseSAESlice):
    architecture = "standard"

    def _take_encoder(self, sae: SAE, index: torch.Tensor, device: torch.device) -> None:
        self.encoder = sae.W_enc[:, index].to(device).contiguous()     # [d, n]
        self.b_enc = sae.b_enc[index].to(device)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu_()
