"""Pin SAE features to the activation they have in the unedited run, at the same position.

[Y25]'s harm-category analysis clamps one category's specific features "with the common ones
held at their clean values" (METHOD.md §5). Pinning needs the unedited run's activations of
the pinned features at every position, generated ones included, so it runs on *twin rows*:
a batch of ``n`` prompts goes through the model as ``2n`` rows, rows ``[0, n)`` edited and rows
``[n, 2n)`` the same tokens left alone (``twin_batch``). At each layer holding pinned features,
the hook encodes them on the twin (clean) rows and sets them on the edited rows:

    x_e <- x_e + sum_{i in S_L} (f_i(x_c) - f_i(x_e)) d_i

(the set-to-value closed form of METHOD.md §3, with a value per row and position). The clean
rows are the clean pass that caches the values; the edited rows are the pass that sets them.
In generation the twin rows are made to take the edited rows' tokens (``CopyEditedTokens``),
so a generated position is pinned to the unedited model's activation on the same text.

Every other intervention of the pass must leave the twin rows alone: build feature edits with
``edited_rows_only``. Attach the pin after them: at a layer both edit, the pin then sees their
edit and restores its own features.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle
from transformers import BatchEncoding, LogitsProcessor

from refusal_lens.hooks import add_output_edit
from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp, group_by_layer
from refusal_lens.interventions.features import FeatureIntervention
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet
from refusal_lens.saes.slices import SparseSAESlice, cached_slice


def twin_batch(batch: BatchEncoding) -> BatchEncoding:
    """``batch`` stacked on itself: rows ``[0, n)`` to edit, rows ``[n, 2n)`` their clean twins."""
    return BatchEncoding({key: torch.cat([value, value]) for key, value in batch.items()})


def edited_rows_only(saes: SAESet, features: Iterable[FeatureKey], n_edited: int,
                     op: FeatureOp | None = None) -> FeatureIntervention:
    """A feature intervention on rows ``[0, n_edited)`` of a twin batch; the twins stay clean."""
    features = [(int(L), int(i)) for L, i in features]
    return FeatureIntervention.for_rows(saes, [features] * n_edited + [[]] * n_edited, op)


class PinnedFeatures:
    """Set features ``S`` on the edited rows of a twin batch to their value on the clean twins."""

    def __init__(self, saes: SAESet, features: Iterable[FeatureKey] | Mapping[int, Sequence[int]], n_edited: int):
        self.saes = saes
        self.features = group_by_layer(features)
        if not self.features:
            raise ValueError("No features to pin.")
        missing = [L for L in self.features if L not in saes]
        if missing:
            raise KeyError(f"No SAE at layers {missing}; the SAE set covers {saes.layers}.")
        if n_edited < 1:
            raise ValueError(f"A twin batch has at least one edited row, got n_edited={n_edited}.")
        self.n_edited = n_edited
        self._slices: dict[tuple[int, torch.device], SparseSAESlice] = {}

    def _slice(self, layer: int, device: torch.device) -> SparseSAESlice:
        key = (layer, torch.device(device))
        if key not in self._slices:
            self._slices[key] = cached_slice(self.saes[layer], self.features[layer], key[1])
        return self._slices[key]

    def edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        n = self.n_edited
        if x.shape[0] != 2 * n:
            raise ValueError(f"Pinning needs a twin batch of {2 * n} rows (edited, then clean); got {x.shape[0]} "
                             "rows. Build the batch with twin_batch.")
        sparse = self._slice(layer, x.device)
        clean, _ = sparse.encode(x[n:])
        value = F.pad(clean, (0, sparse.width - sparse.n)).reshape(-1, sparse.width)
        return torch.cat([sparse.edit(x[:n], "set", value), x[n:]])

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        return [add_output_edit(chat_model.layers[chat_model.check_layer(layer)],
                                lambda x, layer=layer: self.edit(layer, x))
                for layer in self.features]

    def describe(self) -> dict:
        return {"type": "pinned_features", "n_edited": self.n_edited,
                "features": [{"layer": L, "feature": i} for L, idx in self.features.items() for i in idx],
                "saes": self.saes.describe()}


class CopyEditedTokens(LogitsProcessor):
    """In greedy generation of a twin batch, make each clean twin take its edited row's next token."""

    def __init__(self, n_edited: int):
        self.n_edited = n_edited

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.n_edited
        chosen = scores[:n].argmax(-1)
        forced = torch.full_like(scores[n:], float("-inf"))
        forced.scatter_(-1, chosen[:, None], 0.0)
        return torch.cat([scores[:n], forced])
