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
CHUNK_ELEMENTS_CPU = 1 << 25  # largest temporary (tokens × d_sae) built at once
# on an accelerator each chunk ends in a wait for the device (the count of changed entries):
# larger chunks, so that a layer of a 100 × 64-token batch takes one or two
CHUNK_ELEMENTS_ACCELERATOR = 1 << 27


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


def decoder_scale(sae: SAE) -> torch.Tensor | None:
    """``1 / |W_dec[i]|`` per feature when sae_lens decodes ``f_i / |W_dec[i]|``
    (``rescale_acts_by_decoder_norm``), so that ``d_i = W_dec[i] / |W_dec[i]|``; else None."""
    if not getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return None
    return 1 / sae.W_dec.detach().norm(dim=-1)


@dataclass
class LayerChanges:
    """One batch at one layer: the features that changed, by token of the flattened real tokens."""

    token: torch.Tensor        # [n] index into the real (unpadded) tokens, in row-major order
    feature: torch.Tensor      # [n]
    delta: torch.Tensor        # [n] f_patched - f_clean
    attribution: torch.Tensor  # [n] delta * (d_i · ḡ)
    error: torch.Tensor        # [tokens] the error term's share


@torch.no_grad()
def decompose(sae: SAE, clean: torch.Tensor, patched: torch.Tensor, grad: torch.Tensor) -> LayerChanges:
    """Attributions of the changed features and the error term's share, for the real tokens'
    clean and patched residuals and the averaged gradient ``ḡ`` (all ``[tokens, d]``).

    A chunk of tokens at a time: sae_lens's own encode of clean and patched gives the
    features whose activation differs, and one product ``ḡ W_decᵀ`` gives ``d_i · ḡ`` for
    every feature of the chunk, read at those entries. The product costs about as much as
    one encode; gathering a ``d_model``-long decoder row per changed entry instead (~80
    entries a token) moved ~30 times the product's bytes. No ``[tokens, d_sae]`` tensor
    outlives its chunk. The product runs in the decoder's dtype: for a bf16 SAE, the
    precision of the bf16 gradient itself and of a dense ``∂m/∂f = ∂m/∂x W_decᵀ``.
    """
    work, device = grad.dtype, sae.W_dec.device
    decoder, scale = sae.W_dec.detach(), decoder_scale(sae)
    elements = CHUNK_ELEMENTS_CPU if device.type == "cpu" else CHUNK_ELEMENTS_ACCELERATOR
    chunk = max(1, elements // sae.cfg.d_sae)
    tokens, features, deltas, projections = [], [], [], []
    for start in range(0, clean.shape[0], chunk):
        stop = start + chunk
        delta = (sae.encode(patched[start:stop].to(device, decoder.dtype))
                 - sae.encode(clean[start:stop].to(device, decoder.dtype)))
        token, feature = delta.nonzero(as_tuple=True)
        projected = (grad[start:stop].to(device, decoder.dtype) @ decoder.T)[token, feature].to(work)
        tokens.append(token + start)
        features.append(feature)
        deltas.append(delta[token, feature].to(work))
        projections.append(projected if scale is None else projected * scale[feature].to(work))
    token, feature, delta, projected = (torch.cat(parts).to(grad.device)
                                        for parts in (tokens, features, deltas, projections))
    attribution = delta * projected
    total = ((patched.to(work) - clean.to(work)) * grad).sum(-1)
    error = total - torch.zeros_like(total).index_add_(0, token, attribution)
    return LayerChanges(token, feature, delta, attribution, error)
