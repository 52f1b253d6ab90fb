"""Slice of a JumpReLU SAE: ``f = relu(pre) * (pre > threshold)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sae_lens import SAE

from refusal_lens.saes.slices.base import SparseSAESlice


class JumpReLUSlice(SparseSAESlice):
    architecture = "jumprelu"

    def _take_encoder(self, sae: SAE, index: torch.Tensor, device: torch.device) -> None:
        self.encoder = sae.W_enc[:, index].to(device).contiguous()     # [d, n]
        self.b_enc = sae.b_enc[index].to(device)
        self.threshold = sae.threshold[index].to(device)
        # relu(pre) * (pre > t) == pre where pre > max(t, 0), else 0: two kernels, in place
        self.gate = self.threshold.clamp_min(0)

    def _pad(self, extra: int) -> None:
        super()._pad(extra)
        self.gate = F.pad(self.gate, (0, extra), value=float("inf"))

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.masked_fill_(pre <= self.gate, 0.0)
