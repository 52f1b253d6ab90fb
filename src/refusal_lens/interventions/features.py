"""SAE feature interventions: zero-ablate, scale (clamp-multiply) or set features (METHOD.md §3).

The fast path is the sparse closed form: with the error term kept, editing features ``S``
at layer ``L`` adds ``sum_{i in S} Δ_i(x) d_i`` to the residual, where ``Δ_i`` depends only
on ``f_i(x)``. It needs the |S| encoder columns and decoder rows, not the dictionary (TopK
SAEs still need every pre-activation to know the k-th largest): ``refusal_lens.saes.slices``.
``SpliceFeatureIntervention`` (``splice.py``) is the reference: encode, edit, decode, add the
error back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from refusal_lens.hooks import add_output_edit
from refusal_lens.interventions.cuda_graphs import GraphedEdit, graphed_edit
from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp, group_by_layer
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet
from refusal_lens.saes.slices import SparseSAESlice, cached_slice


class FeatureIntervention:
    """Edit SAE features at any set of (layer, feature), all positions or a position mask.

    ``row_masks[layer]`` (bool ``[batch, n_features_at_layer]``, columns in the order of
    ``self.features[layer]``) lets each batch row edit its own subset, so many
    (prompt, feature set) pairs share one forward pass; see ``for_rows``.
    ``position_mask`` (bool ``[batch, prompt_len]``) limits the edit to those prompt
    positions; generated tokens are edited when ``include_generated`` is true.

    On a GPU, an edit of a small input (a decode step) that recurs with the same shape is
    replayed from a CUDA graph (``use_cuda_graphs``; inputs up to ``cuda_graph_max_bytes``,
    at most ``cuda_graph_max_count`` layer-shapes an intervention).
    """

    use_cuda_graphs: bool = True
    cuda_graph_max_bytes: int = 4 << 20
    cuda_graph_max_count: int = 1024

    def __init__(self, saes: SAESet, features: Iterable[FeatureKey] | Mapping[int, Sequence[int]],
                 op: FeatureOp | None = None, *, position_mask: torch.Tensor | None = None,
                 include_generated: bool = True,
                 row_masks: Mapping[int, torch.Tensor] | None = None):
        self.saes = saes
        self.features = group_by_layer(features)
        if not self.features:
            raise ValueError("No features to intervene on.")
        missing = [L for L in self.features if L not in saes]
        if missing:
            raise KeyError(f"No SAE at layers {missing}; the SAE set covers {saes.layers}.")
        self.op = op or FeatureOp()
        self.position_mask = position_mask
        self.include_generated = include_generated
        self.row_masks = dict(row_masks or {})
        self._slices: dict[tuple[int, torch.device], SparseSAESlice] = {}
        self._masks: dict[tuple, tuple] = {}  # (device, batch, seq) -> (sources, {layer: mask})
        self._graphs: dict[tuple, GraphedEdit | bool | None] = {}  # see graphed_edit
        self._values: dict[tuple, torch.Tensor] = {}  # (layer, device) -> op.per_feature's values

    @classmethod
    def for_rows(cls, saes: SAESet, feature_sets: Sequence[Iterable[FeatureKey]],
                 op: FeatureOp | None = None, *, universe: Iterable[FeatureKey] | None = None,
                 **kwargs) -> FeatureIntervention:
        """One feature set per batch row (row ``b`` of every batch edits ``feature_sets[b]``).

        ``universe`` (e.g. a search's candidates, a superset of every row's set) fixes the
        features the per-layer slices hold, so interventions over different subsets of it
        share their slices (``SparseSAESlice`` cache) instead of building new ones.
        """
        sets = [s if isinstance(s, (list, tuple)) else list(s) for s in feature_sets]
        # with a universe, its columns are known up front and each row's keys are looked up
        # as they come (a search step: hundreds of rows of hundreds of keys, no normalising pass)
        union = group_by_layer(universe if universe is not None else {(int(L), int(i)) for s in sets for L, i in s})
        column, start = {}, 0
        for layer, idx in union.items():
            column.update({(layer, f): start + j for j, f in enumerate(idx)})
            start += len(idx)
        lengths, cols = [], []
        for b, row in enumerate(sets):
            try:
                found = [column[k] for k in row]
            except (KeyError, TypeError):  # keys given as lists or numpy scalars, or outside the universe
                keys = [(int(L), int(i)) for L, i in row]
                outside = sorted({k for k in keys if k not in column})
                if outside:
                    raise ValueError(f"Row feature sets have features outside the universe, e.g. {outside[:3]} "
                                     f"(row {b}).") from None
                found = [column[k] for k in keys]
            cols += found
            lengths.append(len(found))
        rows = torch.repeat_interleave(torch.arange(len(sets)), torch.tensor(lengths, dtype=torch.long))
        packed = torch.zeros(len(sets), start, dtype=torch.bool)
        packed[rows, torch.tensor(cols, dtype=torch.long)] = True
        masks, start = {}, 0
        for layer, idx in union.items():
            masks[layer] = packed[:, start:start + len(idx)]
            start += len(idx)
        return cls(saes, union, op, row_masks=masks, **kwargs)

    def slice_for(self, layer: int, device: torch.device) -> SparseSAESlice:
        key = (layer, torch.device(device))
        sparse = self._slices.get(key)
        if sparse is None:
            sparse = self._slices[key] = cached_slice(self.saes[layer], self.features[layer], key[1])
        return sparse

    def _mask(self, layer: int, x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor | None:
        """A ``[batch, seq, n]`` (broadcastable) bool mask on ``device`` (default ``x``'s),
        or None for 'everywhere'."""
        device = x.device if device is None else device
        mask = None
        if layer in self.row_masks:
            mask = self.row_masks[layer].to(device)[:, None, :]
        if self.position_mask is not None:
            if x.shape[1] == self.position_mask.shape[1]:
                positions = self.position_mask.to(device)[:, :, None]
            elif self.include_generated:  # a generation step past the prompt: edited
                return mask
            else:
                positions = torch.zeros((x.shape[0], x.shape[1], 1), dtype=torch.bool, device=device)
            mask = positions if mask is None else mask & positions
        return mask

    def _device_mask(self, layer: int, x: torch.Tensor, sparse: SparseSAESlice) -> torch.Tensor | None:
        """``_mask`` as a multiplier for ``sparse.edit``, on ``x``'s device.

        Built for every layer at once, the first time a layer needs it for this device and
        batch shape, and moved to the device in one copy: a copy per layer inside the
        forward pass would make the host wait for the device at every layer. Replace
        ``row_masks`` / ``position_mask`` rather than editing them in place.
        """
        if not self.row_masks and self.position_mask is None:
            return None
        key = (x.device, x.shape[0], x.shape[1])
        cached = self._masks.get(key)
        if cached is None or cached[0] is not self.position_mask or cached[1] is not self.row_masks:
            cached = self._masks[key] = (self.position_mask, self.row_masks, self._build_masks(x))
        return cached[2].get(layer)

    def _build_masks(self, x: torch.Tensor) -> dict[int, torch.Tensor | None]:
        cpu = torch.device("cpu")
        built: dict[int, torch.Tensor | None] = {}
        pieces: list[tuple[int, torch.Tensor]] = []
        for layer in self.features:
            sparse = self.slice_for(layer, x.device)
            mask = self._mask(layer, x, cpu)
            if mask is None:
                built[layer] = None
                continue
            if mask.shape[-1] == sparse.n < sparse.width:  # zeros for the padding features
                mask = F.pad(mask, (0, sparse.width - sparse.n))
            pieces.append((layer, mask.to(sparse.dtype)))
        if x.device.type != "cpu" and len({(m.shape[:-1], m.dtype) for _, m in pieces}) == 1:
            # one host-to-device copy for all layers, padded to the widest, viewed back
            widest = max(m.shape[-1] for _, m in pieces)
            stacked = torch.stack([F.pad(m, (0, widest - m.shape[-1])) for _, m in pieces]).to(x.device)
            built.update({layer: stacked[j, ..., :m.shape[-1]] for j, (layer, m) in enumerate(pieces)})
        else:
            built.update({layer: m.to(x.device) for layer, m in pieces})
        return built

    def value_for(self, layer: int, sparse: SparseSAESlice) -> float | torch.Tensor:
        """``op.value``, or with ``op.per_feature`` each of the slice's features' own value
        (``[width]``, 0 for the padding features, which never fire)."""
        if not self.op.per_feature:
            return self.op.value
        key = (layer, sparse.decoder.device)
        cached = self._values.get(key)
        if cached is None:
            values = torch.tensor(self.op.layer_values(layer, self.features[layer]), dtype=sparse.dtype)
            cached = self._values[key] = F.pad(values, (0, sparse.width - len(values))).to(sparse.decoder.device)
        return cached

    def edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        sparse = self.slice_for(layer, x.device)
        return sparse.edit(x, self.op.kind, self.value_for(layer, sparse), self._device_mask(layer, x, sparse))

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        handles = []
        for layer in self.features:
            block = chat_model.layers[chat_model.check_layer(layer)]
            handles.append(add_output_edit(block, self._editor(layer)))
        return handles

    def _editor(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The hook's function at ``layer``: ``edit``, with as little host work per call as
        possible (a decode step calls it at every layer for a handful of tokens, so its cost
        is the host's, not the GPU's)."""
        if type(self).edit is not FeatureIntervention.edit:  # a subclass brings its own edit
            return lambda x: self.edit(layer, x)
        slices: dict[torch.device, SparseSAESlice] = {}

        def run(x: torch.Tensor) -> torch.Tensor:
            sparse = slices.get(x.device)
            if sparse is None:
                sparse = slices[x.device] = self.slice_for(layer, x.device)
            mask = (self._device_mask(layer, x, sparse)
                    if self.row_masks or self.position_mask is not None else None)
            value = self.value_for(layer, sparse)
            if (self.use_cuda_graphs and x.is_cuda and not torch.is_grad_enabled()
                    and x.numel() * x.element_size() <= self.cuda_graph_max_bytes):
                return graphed_edit(self._graphs, layer, sparse, self.op, x, mask, self.cuda_graph_max_count, value)
            return sparse.edit(x, self.op.kind, value, mask)

        return run

    def describe(self) -> dict:
        return {"type": "features", "op": self.op.describe(),
                "features": [{"layer": L, "feature": i} for L, idx in self.features.items() for i in idx],
                "saes": self.saes.describe()}
