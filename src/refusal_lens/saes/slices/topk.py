"""Slice of a TopK SAE: ``f_i = relu(pre_i)`` if ``pre_i`` is among the ``k`` largest, else 0.

Membership in the top k depends on every pre-activation, so this slice holds the whole
encoder and only the decoder side is sparse.
"""

from __future__ import annotations

import torch
from sae_lens import SAE

from refusal_lens.saes.slices.base import SparseSAESlice, fold_b_dec


class TopKSlice(SparseSAESlice):
    architecture = "topk"
    cacheable = False  # it holds the whole encoder: not kept around

    def _take_encoder(self, sae: SAE, index: torch.Tensor, device: torch.device) -> None:
        self.k = sae.cfg.k
        self.encoder = sae.W_enc.to(device)                             # [d, d_sae]
        self.b_enc = sae.b_enc.to(device)
        self.index = index.to(device)
        self.dec_norm = sae.W_dec.norm(dim=-1).to(device) if self.rescale else None

    def _folded_bias(self) -> torch.Tensor:
        return fold_b_dec(self.b_enc, self.b_dec_in, self.encoder, self.dtype)  # no float copy of the dictionary

    def _padded_width(self) -> int:
        return self.n  # the pre-activations span the dictionary: nothing to align

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.dec_norm is not None:
            pre = pre * self.dec_norm
        kth = pre.topk(self.k, dim=-1).values[..., -1:]
        pre = pre.index_select(-1, self.index)
        return torch.where(pre >= kth, pre.relu(), torch.zeros_like(pre))
