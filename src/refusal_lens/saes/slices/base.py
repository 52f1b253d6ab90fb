"""The part of one SAE that encoding and decoding a chosen subset of its features needs.

Editing or reading features ``S`` at a layer needs the |S| encoder columns and decoder rows,
not the dictionary. A slice holds them in the layout its kernels want: ``b_dec`` folded into
the encoder bias, the feature count padded to a multiple of ``ALIGN``. One subclass per SAE
architecture (``standard.py``, ``jumprelu.py``, ``topk.py``) says how pre-activations become
activations; ``sparse_slice`` in ``architectures.py`` picks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from sae_lens import SAE

ALIGN = 8  # slices are padded to a multiple of this many features
SUPPORTED_NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RESCALING_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")  # those that change the SAE's input

EditKind = Literal["zero", "scale", "set"]


def fold_b_dec(b_enc: torch.Tensor, b_dec_in: torch.Tensor, encoder: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """``c - b E``: with it, ``(x - b) E + c = x E + (c - b E)`` is one fused matrix product
    instead of a pass over the residual and a product. Computed in float32 at least (float64
    for a float64 SAE, so that its slices agree with the SAE to float64 rounding)."""
    work = torch.promote_types(dtype, torch.float32)
    return (b_enc.to(work) - (b_dec_in.to(encoder.dtype) @ encoder).to(work)).to(dtype)


class SparseSAESlice(ABC):
    """Encode features ``S`` of one SAE, and edit them in the residual (the sparse closed form).

    Build one with ``sparse_slice(sae, features, device)``. ``n`` is ``len(S)``; ``width``
    is ``n`` padded with features that never fire (the kernels' layout).
    """

    architecture: ClassVar[str]
    cacheable: ClassVar[bool] = True  # small enough to keep around between interventions

    def __init__(self, sae: SAE, features: Sequence[int], device: torch.device):
        if getattr(sae.cfg, "reshape_activations", "none") != "none":
            raise NotImplementedError("Feature interventions need residual-stream SAEs (not hook_z).")
        self.normalization = sae.cfg.normalize_activations
        if self.normalization not in SUPPORTED_NORMALIZATIONS:
            raise NotImplementedError(f"SAE input normalization {self.normalization!r} is not "
                                      f"supported; supported: {SUPPORTED_NORMALIZATIONS}.")
        d_sae = sae.cfg.d_sae
        bad = [i for i in features if not 0 <= i < d_sae]
        if bad:
            raise IndexError(f"Features {bad[:5]} out of range for an SAE of width {d_sae}.")
        index = torch.tensor(list(features), dtype=torch.long, device=sae.W_dec.device)
        self.dtype = sae.W_dec.dtype
        self.rescale = bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False))
        self.n = len(index)
        with torch.no_grad():
            decoder = sae.W_dec[index]
            if self.rescale:
                decoder = decoder / sae.W_dec[index].norm(dim=-1, keepdim=True)
            self.decoder = decoder.to(device).contiguous()                     # [n, d]
            self.b_dec_in = (sae.b_dec * sae.cfg.apply_b_dec_to_input).to(device)
            self._take_encoder(sae, index, device)
            self.b_pre = self._folded_bias()
            self.width = self._padded_width()
            if self.width > self.n:
                self._pad(self.width - self.n)

    @abstractmethod
    def _take_encoder(self, sae: SAE, index: torch.Tensor, device: torch.device) -> None:
        """Set ``encoder`` (``[d, n]`` or more), ``b_enc`` and what ``_activate`` needs."""

    @abstractmethod
    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        """``[tokens, width]`` activations from the pre-activations ``x E + b_pre`` (may work in place)."""

    def _folded_bias(self) -> torch.Tensor:
        return fold_b_dec(self.b_enc, self.b_dec_in, self.encoder.to(torch.promote_types(self.dtype, torch.float32)),
                          self.dtype)

    def _padded_width(self) -> int:
        """Zero features pad the slice to a multiple of ``ALIGN``, so that both products have
        16-byte-aligned rows (tensor-core kernels); a padding feature never fires."""
        return -(-self.n // ALIGN) * ALIGN

    def _pad(self, extra: int) -> None:
        self.encoder = F.pad(self.encoder, (0, extra))
        self.b_pre = F.pad(self.b_pre, (0, extra))
        self.decoder = F.pad(self.decoder, (0, 0, 0, extra))

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """SAE input and the factor that maps a decoder-space change back to the residual."""
        if self.normalization == "constant_norm_rescale":
            # clamped: a zero residual (a zero pad embedding) must not turn into NaN
            coeff = (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return x * coeff, 1.0 / coeff
        if self.normalization == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centered = x - mu
            std = centered.std(dim=-1, keepdim=True)
            return centered / (std + 1e-5), std
        return x, 1.0

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Activations of the slice's features (``[..., n]``) and the output scale, for residual ``x``."""
        acts, out_scale = self._encode_rows(x.reshape(-1, x.shape[-1]))
        if not isinstance(out_scale, float):
            out_scale = out_scale.view(*x.shape[:-1], 1)
        return acts[:, :self.n].reshape(*x.shape[:-1], self.n), out_scale

    def _encode_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """``encode`` of ``[tokens, d]``: few kernels, as it runs at every layer of every pass."""
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.normalization in RESCALING_NORMALIZATIONS:
            x, out_scale = self._normalize(x)
        else:
            out_scale = 1.0
        return self._activate(torch.addmm(self.b_pre, x, self.encoder)), out_scale

    def edit(self, x: torch.Tensor, kind: EditKind, value: float | torch.Tensor = 0.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` with the slice's features zeroed, scaled by ``value`` or set to ``value``;
        ``mask`` (``[batch, seq or 1, width or 1]`` in the slice's dtype, or None for
        everywhere) says where. For ``set``, ``value`` may be one value a feature
        (``[width]`` in the slice's dtype, on its device).

        ``x + sum_i Δ_i d_i`` where ``Δ_i`` is ``-f_i`` (zero), ``(c - 1) f_i`` (scale) or
        ``v - f_i`` (set): the scalar goes into the decoding product, and the residual is
        added in the same fused product (one rounding) when no normalization rescales it.
        """
        rows = x.reshape(-1, x.shape[-1])
        acts, out_scale = self._encode_rows(rows)
        if kind == "set":
            delta, alpha = value - acts, 1.0
        else:
            delta, alpha = acts, (-1.0 if kind == "zero" else value - 1.0)
        if mask is not None:
            n = delta.shape[-1]
            delta = (delta.view(*x.shape[:-1], n) * mask).view(-1, n)
        if isinstance(out_scale, float) and x.dtype == self.dtype:
            return torch.addmm(rows, delta, self.decoder, alpha=alpha).view(x.shape)
        change = (delta @ self.decoder) * (alpha * out_scale)
        return x + change.to(x.dtype).view(x.shape)
