"""Directional ablation and activation addition [A24] (METHOD.md §2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from refusal_lens.hooks import add_input_edit, add_output_edit
from refusal_lens.models import ChatModel


def _unit(direction: torch.Tensor) -> torch.Tensor:
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("The direction has zero or non-finite norm.")
    return direction / norm


def _unit_rows(direction: torch.Tensor) -> torch.Tensor:
    """``direction`` normalised: one vector ``[d]``, or each row of ``[rows, d]``."""
    if direction.dim() == 1:
        return _unit(direction)
    if direction.dim() != 2:
        raise ValueError(f"A direction is [d_model] or [rows, d_model]; got shape {tuple(direction.shape)}.")
    norms = direction.norm(dim=-1, keepdim=True)
    if not (torch.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError("A direction has zero or non-finite norm.")
    return direction / norms


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``x - (x · r̂) r̂`` along the last dimension; ``unit`` ``[d]``, or ``[rows, d]`` (one per batch row)."""
    unit = unit.to(hidden.dtype)
    if unit.dim() == 1:
        return hidden - (hidden @ unit).unsqueeze(-1) * unit
    if unit.shape[0] != hidden.shape[0]:
        raise ValueError(f"{unit.shape[0]} directions for a batch of {hidden.shape[0]} rows.")
    shape = (unit.shape[0], *([1] * (hidden.dim() - 2)), unit.shape[1])
    unit = unit.view(shape)
    return hidden - (hidden * unit).sum(-1, keepdim=True) * unit


def residual_writers(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs a decoder block adds to the residual stream: (attention, MLP).

    Those are ``self_attn`` and ``mlp`` (Llama, Mistral, Qwen, SmolLM, Gemma-1), or the norms
    after them where the block has post-norms (Gemma-2/3, OLMo-2: ``post_attention_layernorm``
    and ``post_feedforward_layernorm``), so that what is added is what gets cleaned.
    """
    if hasattr(block, "post_feedforward_layernorm") and hasattr(block, "post_attention_layernorm"):
        return block.post_attention_layernorm, block.post_feedforward_layernorm
    if hasattr(block, "self_attn") and hasattr(block, "mlp"):
        return block.self_attn, block.mlp
    raise TypeError(f"Cannot find the attention and MLP of {type(block).__name__}: directional ablation "
                    "needs blocks with `self_attn` and `mlp` (add the block's names to residual_writers).")


@dataclass
class DirectionalAblation:
    """Remove ``direction`` wherever a block reads or writes the residual stream [A24].

    At every block (or only at ``layers``): its input, and the outputs of its attention and
    its MLP, at all positions, generated ones included, as Arditi et al.'s code does. The MLP
    then reads a mid-block residual that is clean too; editing only each block's input and
    output is not equivalent (METHOD.md §2). A ``direction`` of shape ``[rows, d_model]``
    ablates a different direction in each row of the batch (the direction search scores many
    candidates in one forward pass this way).
    """

    direction: torch.Tensor
    layers: Sequence[int] | None = None

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        unit = _unit_rows(self.direction.detach().float()).to(chat_model.device)
        units = {unit.device: unit}  # by device: a model split over devices edits each block on its own

        def ablate(hidden: torch.Tensor) -> torch.Tensor:
            on_device = units.get(hidden.device)
            if on_device is None:
                on_device = units[hidden.device] = unit.to(hidden.device)
            return project_out(hidden, on_device)

        blocks = (range(chat_model.n_layers) if self.layers is None
                  else sorted({chat_model.check_layer(L) for L in self.layers}))
        handles = []
        for index in blocks:
            block = chat_model.layers[index]
            handles.append(add_input_edit(block, ablate))
            for writer in residual_writers(block):
                handles.append(add_output_edit(writer, ablate))
        return handles

    def describe(self) -> dict:
        described = {"type": "directional_ablation", "norm": float(self.direction.norm())}
        if self.layers is not None:
            described["layers"] = sorted(int(L) for L in self.layers)
        return described


@dataclass
class ActivationAddition:
    """Add ``coefficient * vector`` to the residual stream at ``layer`` (block output), all positions.

    A ``vector`` of shape ``[rows, d_model]`` adds a different vector to each row of the batch.
    """

    vector: torch.Tensor
    layer: int
    coefficient: float = 1.0

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        layer = chat_model.check_layer(self.layer)
        shift = (self.coefficient * self.vector.detach()).to(chat_model.layer_device(layer))
        if shift.dim() == 2:
            shift = shift[:, None, :]

        def add(hidden: torch.Tensor) -> torch.Tensor:
            if shift.dim() == 3 and shift.shape[0] != hidden.shape[0]:
                raise ValueError(f"{shift.shape[0]} vectors for a batch of {hidden.shape[0]} rows.")
            return hidden + shift.to(hidden.device, hidden.dtype)

        return [add_output_edit(chat_model.layers[layer], add)]

    def describe(self) -> dict:
        return {"type": "activation_addition", "layer": self.layer, "coefficient": self.coefficient}
