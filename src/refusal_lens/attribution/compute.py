"""``attribute``: LA-IG (or attribution patching) over the SAE features of every layer asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from refusal_lens import distributed
from refusal_lens.attribution.decomposition import LayerChanges, check_sae, decompose
from refusal_lens.attribution.gradients import (clean_point_gradients, integrated_gradient,
                                                interpolation_points, logits_from_layer)
from refusal_lens.attribution.metric import forward_capturing, jailbreak_tokens, metric_from_logits
from refusal_lens.attribution.result import AttributionResult, LayerAttribution
from refusal_lens.interventions import DirectionalAblation
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.saes import SAESet

DEFAULT_BATCH = 8  # prompts a batch on the CPU (on a GPU: the largest that fits; x steps rows for ig)

Method = Literal["ig", "atp"]


FIELDS = ("prompt", "position", "feature", "delta", "attribution", "error", "m_patched_at_layer")


@dataclass
class _LayerParts:
    """One layer's per-batch pieces (CPU tensors, ``FIELDS``), joined into a ``LayerAttribution`` at the end."""

    parts: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {name: [] for name in FIELDS})

    def add(self, pieces: Sequence[torch.Tensor]) -> None:
        for name, piece in zip(FIELDS, pieces, strict=True):
            self.parts[name].append(piece)

    def join(self, layer: int, width: int) -> LayerAttribution:
        joined = {name: torch.cat(pieces) for name, pieces in self.parts.items() if name != "error"}
        error = torch.cat([F.pad(e, (width - e.shape[1], 0)) for e in self.parts["error"]])
        return LayerAttribution(layer, joined["prompt"], joined["position"], joined["feature"], joined["delta"],
                                joined["attribution"], error, joined["m_patched_at_layer"])


def _layer_pieces(changes: LayerChanges, real: tuple[torch.Tensor, torch.Tensor], attention_mask: torch.Tensor,
                  first_prompt: int, m_patched_at_layer: torch.Tensor) -> list[torch.Tensor]:
    """``FIELDS`` of one layer and batch, on the batch's device; ``real`` = (row, column) of its real tokens."""
    prompt, column = real
    token = changes.token
    error = torch.zeros(attention_mask.shape, dtype=changes.error.dtype, device=changes.error.device)
    error[prompt, column] = changes.error
    return [prompt[token] + first_prompt, column[token] - attention_mask.shape[1], changes.feature, changes.delta,
            changes.attribution, error, m_patched_at_layer.to(changes.error.device)]


def _to_cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` on the CPU, moved with one copy per dtype: one wait for the device per batch
    instead of one per tensor (seven a layer), each of which left the device idle."""
    if all(t.device.type == "cpu" for t in tensors):
        return tensors
    out: list[torch.Tensor] = [torch.empty(0)] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for index in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in index]).cpu()
        for i, piece in zip(index, flat.split([tensors[i].numel() for i in index])):
            out[i] = piece.view(tensors[i].shape)
    return out


def attribute(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], direction: torch.Tensor, *,
              layers: Sequence[int] | None = None, method: Method = "ig", steps: int = 10,
              batch_size: int | None = None, refusal_token: int | None = None,
              layer_patched_metric: bool | None = None) -> AttributionResult:
    """Attribute ``m = logit[jailbreak] - logit[refusal]`` to the SAE features at ``layers``
    (default: every layer of ``saes``), per prompt, position and feature (METHOD.md §5).

    "Patched" is directional ablation of ``direction`` at all layers; the jailbreak token is
    each prompt's argmax next token under it among the non-refusal tokens; the refusal token
    is the model's first refusal token unless given.

    ``method="ig"``: integrated gradients one layer at a time, ``steps`` points
    ``α = k/steps, k = 0..steps-1`` (``steps=1`` is attribution patching). ``method="atp"``:
    attribution patching at every layer from one backward pass. ``layer_patched_metric``
    (default: on for ``ig``, off for ``atp``) also runs the layers above each SAE layer from
    its patched residual, for ``m_patched_at_layer`` (NaN when off). ``batch_size`` prompts go
    through together (``× steps`` rows for ``ig``; None: the largest batch that fits the GPU,
    ``DEFAULT_BATCH`` on the CPU). In a data-parallel run the prompts are split over the
    processes and every process gets the whole result.
    """
    instructions = list(instructions)
    if method not in ("ig", "atp"):
        raise ValueError(f"Unknown attribution method {method!r}: use 'ig' or 'atp'.")
    interpolation_points(steps)  # validates steps
    if not instructions:
        raise ValueError("No instructions to attribute on.")
    layers = _checked_layers(chat_model, saes, layers)
    refusal = chat_model.refusal_token_ids[0] if refusal_token is None else int(refusal_token)
    run = _Run(chat_model, saes, layers, method, steps, refusal, DirectionalAblation(direction),
               method == "ig" if layer_patched_metric is None else layer_patched_metric)
    sharded = distributed.active()
    if sharded:
        run.n_done = distributed.shard_bounds(len(instructions))[0]
    with distributed.local():
        run_batched(chat_model, f"attribution_{method}_{steps}", distributed.shard(instructions) if sharded
                    else instructions, run.add_batch, batch_size=batch_size, default=DEFAULT_BATCH, shard=False,
                    tokens=lambda part: longest_prompt(chat_model, part),
                    progress="attribution" if len(instructions) > (batch_size or DEFAULT_BATCH) else None)
    return run.gathered() if sharded else run.result()


@dataclass
class _Run:
    """``attribute``'s settings and what it has gathered so far, batch by batch."""

    chat_model: ChatModel
    saes: SAESet
    layers: list[int]
    method: Method
    steps: int
    refusal: int
    ablation: DirectionalAblation
    layer_patched_metric: bool
    parts: dict[int, _LayerParts] = field(default_factory=dict)
    per_prompt: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    n_done: int = 0

    def add_batch(self, instructions: list[str]) -> None:
        chat_model, layers, refusal = self.chat_model, self.layers, self.refusal
        batch = chat_model.tokenize(instructions)
        mask = batch["attention_mask"]
        with torch.no_grad():
            patched, logits = forward_capturing(chat_model, batch, layers, [self.ablation])
        tokens = jailbreak_tokens(logits, {*chat_model.refusal_token_ids, refusal})
        if self.method == "ig":
            with torch.no_grad():
                clean, clean_logits = forward_capturing(chat_model, batch, layers)
            clean_metric, grads = metric_from_logits(clean_logits, tokens, refusal), {}
        else:
            clean, grads, clean_metric = clean_point_gradients(chat_model, batch, layers, tokens, refusal)
        tokens_at = mask.bool().nonzero(as_tuple=True)  # the real tokens, row-major
        real = tokens_at[0] * mask.shape[1] + tokens_at[1]  # as flat indices: a gather, no wait for the device
        pieces = []
        for L in layers:
            grad = (grads.pop(L) if self.method == "atp"
                    else integrated_gradient(chat_model, L, clean[L], patched[L], mask, tokens, refusal, self.steps))
            rows = (x.flatten(0, 1).index_select(0, real) for x in (clean[L], patched[L], grad))
            changes = decompose(self.saes[L], *rows)
            at_layer = (_metric_at_layer(chat_model, L, patched[L], mask, tokens, refusal) if self.layer_patched_metric
                        else torch.full((len(instructions),), float("nan")))
            pieces.append(_layer_pieces(changes, tokens_at, mask, self.n_done, at_layer))
            del grad, changes
        moved = iter(_to_cpu([piece for layer_pieces in pieces for piece in layer_pieces]))
        for L in layers:
            self.parts.setdefault(L, _LayerParts()).add([next(moved) for _ in FIELDS])
        for name, value in (("m_clean", clean_metric), ("m_patched", metric_from_logits(logits, tokens, refusal)),
                            ("jailbreak", tokens), ("lengths", mask.sum(1))):
            self.per_prompt.setdefault(name, []).append(value.cpu())
        self.n_done += len(instructions)

    def gathered(self) -> AttributionResult:
        """The result over every process's prompts (prompt indices are global already)."""
        mine = {}
        for L, layer_parts in self.parts.items():
            for name in FIELDS:
                if name != "error":
                    mine[f"{L}/{name}"] = torch.cat(layer_parts.parts[name])
            errors = layer_parts.parts["error"]
            width = max(e.shape[1] for e in errors)
            mine[f"{L}/error"] = torch.cat([F.pad(e, (width - e.shape[1], 0)) for e in errors])
        mine.update({name: torch.cat(values) for name, values in self.per_prompt.items()})
        self.parts, self.per_prompt = {}, {}
        for tensors in distributed.gather_tensor_dicts(mine, "gathering attributions"):
            for name, value in tensors.items():
                layer, _, field_name = name.rpartition("/")
                if layer:
                    self.parts.setdefault(int(layer), _LayerParts()).parts[field_name].append(value)
                else:
                    self.per_prompt.setdefault(name, []).append(value)
        return self.result()

    def result(self) -> AttributionResult:
        joined = {name: torch.cat(values) for name, values in self.per_prompt.items()}
        width = int(joined["lengths"].max())
        return AttributionResult(self.method, self.steps if self.method == "ig" else 1,
                                 {L: self.parts[L].join(L, width) for L in self.layers},
                                 joined["m_clean"], joined["m_patched"], joined["jailbreak"], self.refusal,
                                 joined["lengths"], self.chat_model.n_pre_instruction_tokens)


def _checked_layers(chat_model: ChatModel, saes: SAESet, layers: Sequence[int] | None) -> list[int]:
    layers = saes.layers if layers is None else sorted({chat_model.check_layer(L) for L in layers})
    missing = [L for L in layers if L not in saes]
    if missing:
        raise KeyError(f"No SAE at layers {missing}; the SAE set covers {saes.layers}.")
    if not layers:
        raise ValueError("No layers to attribute at.")
    for L in layers:
        check_sae(saes[L], L)
    return layers


@torch.no_grad()
def _metric_at_layer(chat_model: ChatModel, layer: int, patched: torch.Tensor, mask: torch.Tensor,
                     jailbreak: torch.Tensor, refusal: int) -> torch.Tensor:
    return metric_from_logits(logits_from_layer(chat_model, layer, patched, mask), jailbreak, refusal)
