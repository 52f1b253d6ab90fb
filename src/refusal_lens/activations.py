"""Read the residual stream, and SAE features on it, at any layers and positions in one forward pass."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import BatchEncoding

from refusal_lens import distributed
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.interventions import FeatureKey, Intervention, group_by_layer, intervene
from refusal_lens.models import ChatModel, position_ids_for
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.saes import SAESet
from refusal_lens.saes.slices import SparseSAESlice, cached_slice

DEFAULT_BATCH = 16  # prompts a forward pass on the CPU (on a GPU: the largest that fits)


class _StopForward(Exception):
    """Raised by the last capture hook: layers above it are not needed."""


def model_inputs(batch: BatchEncoding) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and padding-aware ``position_ids``."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "position_ids": position_ids_for(batch["attention_mask"])}


@torch.no_grad()
def residuals(chat_model: ChatModel, batch: BatchEncoding | Sequence[str], layers: Sequence[int],
              positions: Sequence[int] | None = None,
              interventions: Sequence[Intervention] = ()) -> dict[int, torch.Tensor]:
    """``{layer: [batch, len(positions) or seq, d_model]}`` of block outputs.

    ``positions`` count from the right (-1 = last prompt token; batches are left-padded).
    Interventions are applied first, so the captured stream is the edited one. The
    forward pass stops after the highest requested layer.
    """
    if not isinstance(batch, BatchEncoding):
        batch = chat_model.tokenize(list(batch))
    layers = sorted({chat_model.check_layer(L) for L in layers})
    captured: dict[int, torch.Tensor] = {}
    index = None if positions is None else torch.tensor(list(positions))
    home = chat_model.device

    def capture(layer: int, hidden: torch.Tensor) -> None:
        picked = hidden if index is None else hidden[:, index.to(hidden.device) % hidden.shape[1]]
        captured[layer] = picked.detach().to(home, copy=True)
        if layer == layers[-1]:
            raise _StopForward

    handles = []
    with intervene(chat_model, *interventions), hooks_removed_on_exit(handles):
        for layer in layers:
            handles.append(add_output_edit(chat_model.layers[layer],
                                           lambda h, layer=layer: capture(layer, h)))
        try:
            chat_model.model(**model_inputs(batch), use_cache=False)
        except _StopForward:
            pass
    return captured


def mean_residuals(chat_model: ChatModel, instructions: Sequence[str], layers: Sequence[int],
                   positions: Sequence[int], *, batch_size: int | None = None,
                   progress: str | None = None) -> torch.Tensor:
    """The mean over ``instructions`` of the block outputs at ``layers`` × ``positions`` (counted
    from the right): ``[len(layers), len(positions), d_model]``, float32 on the CPU.

    In a data-parallel run each process sums its share of the instructions and the sums are
    added over the processes."""
    instructions, layers, positions = list(instructions), list(layers), list(positions)
    if not instructions:
        raise ValueError("No instructions to average the residual stream over.")

    def total(chunk: list[str]) -> torch.Tensor:
        acts = residuals(chat_model, chunk, layers, positions)
        return torch.stack([acts[L].float().sum(0) for L in layers]).cpu()

    sharded = distributed.active()
    with distributed.local():
        sums = run_batched(chat_model, "residuals", distributed.shard(instructions) if sharded else instructions,
                           total, batch_size=batch_size, default=DEFAULT_BATCH, progress=progress, shard=False,
                           tokens=lambda part: longest_prompt(chat_model, part))
    summed = torch.zeros((len(layers), len(positions), chat_model.d_model))
    for chunk_sum in sums:
        summed = summed + chunk_sum
    if sharded:
        summed = distributed.all_reduce_sum(summed)
    return summed / len(instructions)


@dataclass(frozen=True)
class FeatureActivations:
    """SAE feature activations read at some positions of some prompts.

    ``values[..., j]`` belongs to feature ``keys[j]``: ``[prompts, positions, features]``, or
    ``[prompts, features]`` when reduced over positions; float32 on the CPU. ``mask`` (bool
    ``[prompts, positions]``) is True where a prompt token was read, False on padding, where
    values are 0. Positions are right-aligned: with every token read, column -1 is each
    prompt's last token. A feature of an ``all_active`` layer that is not in ``keys`` was 0
    at every position read.
    """

    keys: list[FeatureKey]
    values: torch.Tensor
    mask: torch.Tensor
    all_active: tuple[int, ...] = ()

    @cached_property
    def _column(self) -> dict[FeatureKey, int]:
        column: dict[FeatureKey, int] = {}
        for j, key in enumerate(self.keys):
            column.setdefault(key, j)
        return column

    def column(self, key: FeatureKey) -> torch.Tensor:
        """``values[..., j]`` for ``key`` (``[prompts, positions]`` or ``[prompts]``)."""
        key = (int(key[0]), int(key[1]))
        if key in self._column:
            return self.values[..., self._column[key]]
        if key[0] in self.all_active:
            return self.values.new_zeros(self.values.shape[:-1])
        raise KeyError(f"Feature {key} was not read.")


@dataclass
class _BatchRead:
    chosen: dict[int, torch.Tensor]                       # layer -> [b, (P,) n_layer], the slice's columns
    active: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (feature indices, [b, (P,) n_active])
    mask: torch.Tensor                                    # [b, P]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}/mask": self.mask}
        out.update({f"{prefix}/chosen/{L}": v for L, v in self.chosen.items()})
        for L, (index, values) in self.active.items():
            out[f"{prefix}/index/{L}"], out[f"{prefix}/values/{L}"] = index, values
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> _BatchRead:
        read = cls({}, {}, tensors[f"{prefix}/mask"])
        for name, value in tensors.items():
            head, _, layer = name.rpartition("/")
            if head == f"{prefix}/chosen":
                read.chosen[int(layer)] = value
            elif head == f"{prefix}/index":
                read.active[int(layer)] = (value, tensors[f"{prefix}/values/{layer}"])
        return read


def _gather_reads(reads: list[_BatchRead]) -> list[_BatchRead]:
    """Every process's batch reads, in rank order."""
    mine = {name: t for j, read in enumerate(reads) for name, t in read.tensors(str(j)).items()}
    found = []
    for tensors in distributed.gather_tensor_dicts(mine, "gathering SAE feature reads"):
        count = sum(name.endswith("/mask") for name in tensors)
        found += [_BatchRead.from_tensors(tensors, str(j)) for j in range(count)]
    return found


@torch.no_grad()
def read_features(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str],
                  features: Iterable[FeatureKey] | Mapping[int, Sequence[int]] = (), *,
                  all_active: Sequence[int] = (), positions: Sequence[int] | None = None,
                  reduce: Literal["max"] | None = None, interventions: Sequence[Intervention] = (),
                  batch_size: int | None = None) -> FeatureActivations:
    """Activations of SAE features on ``instructions``: one forward pass a batch.

    ``features`` (pairs, kept in the order given, or ``{layer: indices}``) are read on the
    sparse path, through a slice of their SAE; every feature of an ``all_active`` layer that
    is active (> 0) at a position read is read with the whole encoder (``sae.encode``) and
    added to ``keys`` after them, by layer then index. A feature at layer L is read from block
    L's output before any intervention edits that output (what the SAE at L sees: the edits
    at lower layers and at L's input are in effect). The pass stops after the highest layer.

    ``positions`` count from the right (-1 = last prompt token; batches are left-padded with
    an attention mask); None reads every token. ``reduce="max"`` keeps each feature's largest
    activation over the positions read, padding counting as 0. ``batch_size`` prompts go
    through a forward pass together (None: the largest batch that fits the GPU,
    ``DEFAULT_BATCH`` on the CPU). In a data-parallel run the prompts are split over the
    processes and every process gets every activation.
    """
    instructions = list(instructions)
    if reduce not in (None, "max"):
        raise ValueError(f"Unknown reduction {reduce!r}: use None or 'max'.")
    if not instructions:
        raise ValueError("No instructions to read features on.")
    if isinstance(features, Mapping):
        features = [(L, i) for L, idx in features.items() for i in idx]
    pairs = [(int(L), int(i)) for L, i in features]
    reader = _FeatureReader(chat_model, saes, pairs, list(dict.fromkeys(int(L) for L in all_active)),
                            positions, reduce, interventions)
    sharded = distributed.active()
    with distributed.local():
        reads = run_batched(chat_model, "read_features", distributed.shard(instructions) if sharded else instructions,
                            reader.read, batch_size=batch_size, default=DEFAULT_BATCH, shard=False,
                            tokens=lambda part: longest_prompt(chat_model, part),
                            progress="SAE features" if len(instructions) > (batch_size or DEFAULT_BATCH) else None)
    if sharded:
        reads = _gather_reads(reads)
    return _assemble(reads, pairs, reader.by_layer, reader.dense_layers, reduced=reduce is not None)


class _FeatureReader:
    """Reads one batch's features in one forward pass, for ``read_features``."""

    def __init__(self, chat_model: ChatModel, saes: SAESet, pairs: list[FeatureKey], dense_layers: list[int],
                 positions: Sequence[int] | None, reduce: str | None, interventions: Sequence[Intervention]):
        self.by_layer = group_by_layer(pairs)
        self.dense_layers = dense_layers
        layers = {*self.by_layer, *dense_layers}
        missing = sorted(L for L in layers if L not in saes)
        if missing:
            raise KeyError(f"No SAE at layers {missing}; the SAE set covers {saes.layers}.")
        if not layers:
            raise ValueError("No features to read: give features or all_active layers.")
        self.layers = sorted(chat_model.check_layer(L) for L in layers)
        self.chat_model, self.saes, self.reduce, self.interventions = chat_model, saes, reduce, interventions
        self.index = None if positions is None else torch.tensor(list(positions))
        self._slices: dict[tuple[int, torch.device], SparseSAESlice] = {}
        for L in self.by_layer:  # built before the forward pass, on the device it starts on
            self.slice_for(L, chat_model.device)

    def slice_for(self, layer: int, device: torch.device) -> SparseSAESlice:
        """The slice of the features read at ``layer``, on ``device`` (the layer's own, when the
        model is split over devices)."""
        key = (layer, torch.device(device))
        if key not in self._slices:
            self._slices[key] = cached_slice(self.saes[layer], self.by_layer[layer], key[1])
        return self._slices[key]

    def read(self, instructions: list[str]) -> _BatchRead:
        batch = self.chat_model.tokenize(instructions)
        attention = batch["attention_mask"].bool()
        index = None if self.index is None else self.index.to(attention.device) % attention.shape[1]
        read_mask = attention if index is None else attention[:, index]
        out = _BatchRead({}, {}, read_mask.cpu())
        handles = [add_output_edit(self.chat_model.layers[L], lambda h, L=L: self._read_layer(L, h, read_mask, out))
                   for L in self.layers]
        with hooks_removed_on_exit(handles), intervene(self.chat_model, *self.interventions):
            try:
                self.chat_model.model(**model_inputs(batch), use_cache=False)
            except _StopForward:
                pass
        return out

    def _read_layer(self, layer: int, hidden: torch.Tensor, read_mask: torch.Tensor, out: _BatchRead) -> None:
        picked = hidden if self.index is None else hidden[:, self.index.to(hidden.device) % hidden.shape[1]]
        if layer in self.by_layer:
            encoded = self.slice_for(layer, hidden.device).encode(picked)[0]
            out.chosen[layer] = self._finish(encoded, read_mask.to(hidden.device)).float().cpu()
        if layer in self.dense_layers:
            sae = self.saes[layer]
            flat = picked.reshape(-1, picked.shape[-1]).to(sae.W_dec.device)
            acts = sae.encode(flat).view(*picked.shape[:-1], -1)
            acts = self._finish(acts, read_mask.to(acts.device))
            active = torch.nonzero(acts.reshape(-1, acts.shape[-1]).gt(0).any(0)).flatten()
            out.active[layer] = (active.cpu(), acts.index_select(-1, active).float().cpu())
        if layer == self.layers[-1]:
            raise _StopForward

    def _finish(self, acts: torch.Tensor, read_mask: torch.Tensor) -> torch.Tensor:
        """Zero on padding, then reduced over positions if asked."""
        acts = acts.masked_fill(~read_mask[:, :, None], 0)
        return acts.amax(1) if self.reduce == "max" else acts


def _assemble(reads: list[_BatchRead], pairs: list[FeatureKey], by_layer: dict[int, list[int]],
              dense_layers: list[int], reduced: bool) -> FeatureActivations:
    """One ``FeatureActivations`` from the batches' reads: columns in key order, positions
    right-aligned (left-padded to the longest batch when every token was read)."""
    slot = {(L, i): j for L, idx in by_layer.items() for j, i in enumerate(idx)}
    union = {L: torch.unique(torch.cat([r.active[L][0] for r in reads])) for L in dense_layers}
    width = max(r.mask.shape[1] for r in reads)
    values, masks = [], []
    for r in reads:
        prefix = r.mask.shape[:1] if reduced else r.mask.shape
        pieces = [torch.stack([r.chosen[L][..., slot[L, i]] for L, i in pairs], dim=-1)] if pairs else []
        for L in dense_layers:
            found, acts = r.active[L]
            full = torch.zeros((*prefix, len(union[L])))  # inactive: 0, as the full encode has it
            full[..., torch.searchsorted(union[L], found)] = acts
            pieces.append(full)
        block = torch.cat(pieces, dim=-1)
        if not reduced and block.shape[1] < width:
            block = F.pad(block, (0, 0, width - block.shape[1], 0))
        values.append(block)
        masks.append(F.pad(r.mask, (width - r.mask.shape[1], 0), value=False))
    keys = [*pairs, *((L, int(i)) for L in dense_layers for i in union[L])]
    return FeatureActivations(keys, torch.cat(values), torch.cat(masks), tuple(dense_layers))
