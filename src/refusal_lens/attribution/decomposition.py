"""Split a residual-stream gradient into SAE features that changed, plus the error term.

With ``x = f W_dec + b_dec + e`` (affine in ``f`` and ``e``), interpolating ``x`` between
clean and patched interpolates ``f`` and ``e`` alike, and ``∂m/∂f_i = d_i · ∂m/∂x``. So the
attribution of feature ``i`` at a position is ``(f_patched - f_clean)_i (d_i · ḡ)`` and the
error term's share is ``(e_patched - e_clean) · ḡ = Δx · ḡ - Σ_i Δf_i (d_i · ḡ)``. Only the
features whose activation differs are kept, as ``(token, feature, Δf, attribution)`` lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import SAE

from refusal_lens.saes.slices import SUPPORTED_ARCHITECTURES

AFFINE_NORMALIZATIONS = ("none", "expected_average_only_in")  # sae_lens runs neither at run time
CHUNK_ELEMENTS = 1 << 25  # largest temporary (tokens × d_sae, entries × d_model) built at once


def check_sae(sae: SAE, layer: int) -> None:
    """Refuse an SAE whose reconstruction is not ``f W_dec + b_dec`` with fixed decoder rows."""
    if getattr(sae.cfg, "reshape_activations", "none") != "none":
        raise NotImplementedError(f"The SAE at layer {layer} reads attention heads (hook_z); "
                                  "attribution needs residual-stream SAEs.")
    architecture = sae.cfg.architecture()
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise NotImplementedError(f"The SAE at layer {layer} is {architecture!r}; attribution "
                                  f"supports {SUPPORTED_ARCHITECTURES}.")
    normalization = sae.cfg.normalize_activations
    if normalization not in AFFINE_NORMALIZATIONS:
        raise NotImplementedError(
            f"The SAE at layer {layer} normalises its input at run time ({normalization!r}), so its "
            "reconstruction is not affine in its features (x = f W_dec + b_dec + e fails with fixed "
            "decoder rows) and d_i · ∂m/∂x would not be ∂m/∂f_i. Use an SAE without run-time input "
            "normalisation (sae_lens folds 'expected_average_only_in' into the weights when it loads).")


def decoder_rows(sae: SAE, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``d_i`` for ``features`` (``[n, d]``): ``W_dec[i]``, over its norm when the SAE's
    activations are rescaled by the decoder norm (sae_lens decodes ``f_i / |W_dec[i]|``)."""
    rows = sae.W_dec.detach().index_select(0, features.to(sae.W_dec.device)).to(dtype)
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        rows = rows / rows.norm(dim=-1, keepdim=True)
    return rows


@dataclass
class LayerChanges:
    """One batch at one layer: the features that changed, by token of the flattened real tokens."""

    token: torch.Tensor        # [n] index into the real (unpadded) tokens, in row-major order
    feature: torch.Tensor      # [n]
    delta: torch.Tensor        # [n] f_patched - f_clean
    attribution: torch.Tensor  # [n] delta * (d_i · ḡ)
    error: torch.Tensor        # [tokens] the error term's share


@torch.no_grad()
def changed_features(sae: SAE, clean: torch.Tensor, patched: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(token, feature, f_patched - f_clean)`` wherever the activation differs, from
    sae_lens's own encode of ``clean`` and ``patched`` (``[tokens, d]``), a chunk of tokens at
    a time: no ``[tokens, d_sae]`` tensor outlives its chunk."""
    chunk = max(1, CHUNK_ELEMENTS // sae.cfg.d_sae)
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    tokens, features, deltas = [], [], []
    for start in range(0, clean.shape[0], chunk):
        stop = start + chunk
        delta = (sae.encode(patched[start:stop].to(device, dtype))
                 - sae.encode(clean[start:stop].to(device, dtype)))
        token, feature = delta.nonzero(as_tuple=True)
        tokens.append(token + start)
        features.append(feature)
        deltas.append(delta[token, feature])
    return tuple(torch.cat(parts).to(clean.device) for parts in (tokens, features, deltas))


@torch.no_grad()
def decompose(sae: SAE, clean: torch.Tensor, patched: torch.Tensor, grad: torch.Tensor) -> LayerChanges:
    """Attributions of the changed features and the error term's share, for the real tokens'
    clean and patched residuals and the averaged gradient ``ḡ`` (all ``[tokens, d]``)."""
    work = grad.dtype
    token, feature, delta = changed_features(sae, clean, patched)
    delta = delta.to(work)
    projected = torch.empty_like(delta)
    chunk = max(1, CHUNK_ELEMENTS // grad.shape[-1])
    for start in range(0, len(token), chunk):
        stop = start + chunk
        rows = decoder_rows(sae, feature[start:stop], work).to(grad.device)
        projected[start:stop] = (rows * grad.index_select(0, token[start:stop])).sum(-1)
    attribution = delta * projected
    total = ((patched.to(work) - clean.to(work)) * grad).sum(-1)
    error = total - torch.zeros_like(total).index_add_(0, token, attribution)
    return LayerChanges(token, feature, delta, attribution, error)
