"""Directional ablation and activation addition [A24] (METHOD.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle

from refusal_lens.hooks import add_input_edit, add_output_edit
from refusal_lens.models import ChatModel


def _unit(direction: torch.Tensor) -> torch.Tensor:
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("The direction has zero or non-finite norm.")
    return direction / norm


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``x - (x · r̂) r̂`` along the last dimension."""
    unit = unit.to(hidden.dtype)
    return hidden - (hidden @ unit).unsqueeze(-1) * unit


@dataclass
class DirectionalAblation:
    """Remove ``direction`` from the residual stream at every block's input and output.

    That is every point where the residual stream is read or written by a block, at all
    positions, generated ones included (METHOD.md §2, the residual-stream form).
    """

    direction: torch.Tensor

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        unit = _unit(self.direction.detach().float()).to(chat_model.device)
        units = {unit.device: unit}  # by device: a model split over devices edits each block on its own

        def ablate(hidden: torch.Tensor) -> torch.Tensor:
            on_device = units.get(hidden.device)
            if on_device is None:
                on_device = units[hidden.device] = unit.to(hidden.device)
            return project_out(hidden, on_device)

        handles = []
        for block in chat_model.layers:
            handles.append(add_input_edit(block, ablate))
            handles.append(add_output_edit(block, ablate))
        return handles

    def describe(self) -> dict:
        return {"type": "directional_ablation", "norm": float(self.direction.norm())}


@dataclass
class ActivationAddition:
    """Add ``coefficient * vector`` to the residual stream at ``layer`` (block output), all positions."""

    vector: torch.Tensor
    layer: int
    coefficient: float = 1.0

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        layer = chat_model.check_layer(self.layer)
        shift = (self.coefficient * self.vector.detach()).to(chat_model.layer_device(layer))

        def add(hidden: torch.Tensor) -> torch.Tensor:
            return hidden + shift.to(hidden.device, hidden.dtype)

        return [add_output_edit(chat_model.layers[layer], add)]

    def describe(self) -> dict:
        return {"type": "activation_addition", "layer": self.layer, "coefficient": self.coefficient}
