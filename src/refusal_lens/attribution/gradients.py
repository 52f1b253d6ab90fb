"""Gradients of the metric with respect to the residual stream at an SAE layer.

Integrated gradients per layer (Marks et al.'s sparse feature circuits): for layer ``L`` the
block-L output is interpolated between clean and patched, ``x(α) = x_clean + α (x_patched -
x_clean)``, the blocks above ``L`` run normally from it, and ``∂m/∂x`` is averaged over
``α_k = k / steps`` for ``k = 0 .. steps - 1`` (a left Riemann sum: ``steps = 1`` is the
gradient at the clean point, attribution patching). The α steps are rows of one batch, the
blocks up to ``L`` are never rerun (their output is cached), and the gradient is taken with
respect to the interpolated residual only: no weight gets a gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import BatchEncoding

from refusal_lens.attribution.metric import contiguous_head_input, forward_capturing, metric_from_logits
from refusal_lens.models import ChatModel, position_ids_for
from refusal_lens.prefix_cache import _embedding_scale, upper_layers_only


def interpolation_points(steps: int) -> torch.Tensor:
    """``α_k = k / steps`` for ``k = 0 .. steps - 1`` (float64)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1 (the number of α points), got {steps!r}.")
    return torch.arange(steps, dtype=torch.float64) / steps


@contextmanager
def weights_frozen(module: nn.Module) -> Iterator[None]:
    """No parameter of ``module`` requires grad inside the block; the flags are restored on exit.

    The forward pass then records no weight-gradient work and saves no inputs for it.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def logits_from_layer(chat_model: ChatModel, layer: int, hidden: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-position logits of a forward pass that starts from ``hidden``, the output of block
    ``layer`` (``[rows, seq, d]``), and runs blocks ``layer + 1 ..`` only."""
    with upper_layers_only(chat_model, layer + 1), contiguous_head_input(chat_model):
        out = chat_model.model(inputs_embeds=hidden.to(chat_model.device) / _embedding_scale(chat_model),
                               attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
                               use_cache=False, logits_to_keep=1)
    return out.logits[:, -1]


def integrated_gradient(chat_model: ChatModel, layer: int, clean: torch.Tensor, patched: torch.Tensor,
                        attention_mask: torch.Tensor, jailbreak: torch.Tensor, refusal: int,
                        steps: int) -> torch.Tensor:
    """``mean_α ∂m/∂x_L`` at ``x_L(α)``, ``[prompts, seq, d]`` in float32 (float64 for a float64
    model): one forward and one backward over ``prompts × steps`` rows (prompt-major)."""
    alphas = interpolation_points(steps)
    work = torch.promote_types(clean.dtype, torch.float32)
    start, change = clean.to(work), (patched.to(work) - clean.to(work))
    points = start[:, None] + alphas.to(clean.device, work)[None, :, None, None] * change[:, None]
    leaf = points.flatten(0, 1).to(clean.dtype).requires_grad_(True)
    with weights_frozen(chat_model.model), torch.enable_grad():
        logits = logits_from_layer(chat_model, layer, leaf, attention_mask.repeat_interleave(steps, 0))
        metric = metric_from_logits(logits, jailbreak.repeat_interleave(steps, 0), refusal)
    (grad,) = torch.autograd.grad(metric.sum(), leaf)
    return grad.to(work).view(clean.shape[0], steps, *clean.shape[1:]).mean(1)


def clean_point_gradients(chat_model: ChatModel, batch: BatchEncoding, layers: Sequence[int],
                          jailbreak: torch.Tensor, refusal: int
                          ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """Attribution patching's gradients: ``∂m/∂x_L`` at the clean point for every layer of
    ``layers``, from one forward and one backward pass.

    Each block output gets a zero offset that requires grad; the gradient at the offset of
    layer ``L`` is the total derivative of ``m`` with respect to ``x_L``, through every block
    above it, as the stream itself is never cut. Returns the clean block outputs, the
    gradients (float32, float64 for a float64 model) and the clean metric.
    """
    rows, seq = batch["input_ids"].shape
    offsets = {L: torch.zeros((rows, seq, chat_model.d_model), dtype=chat_model.dtype, device=chat_model.device,
                              requires_grad=True) for L in layers}
    with weights_frozen(chat_model.model), torch.enable_grad():
        clean, logits = forward_capturing(chat_model, batch, layers, offsets=offsets)
        metric = metric_from_logits(logits, jailbreak, refusal)
    grads = torch.autograd.grad(metric.sum(), [offsets[L] for L in layers])
    work = torch.promote_types(chat_model.dtype, torch.float32)
    return clean, {L: g.to(work) for L, g in zip(layers, grads)}, metric.detach()
