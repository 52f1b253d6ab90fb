"""Feature edits limited to a kind of position, worked out anew for every forward pass (METHOD.md §3).

A scope names positions by their role, not by column numbers, so one intervention serves
batches of any length and greedy generation alike:

- ``all``: every position (the plain ``FeatureIntervention``);
- ``prompt``: every prompt token, no generated one;
- ``post_instruction``: the template tokens after the user's text (e.g. ``<|im_end|>\\n
  <|im_start|>assistant\\n``), the last ``chat_model.n_post_instruction_tokens`` columns of a
  left-padded prompt;
- ``generated``: the tokens the model generates, no prompt token.

A pre-hook on the whole model reads each forward pass's shape: a pass that continues a
key-value cache (a decode step of ``generate``) holds generated tokens only, any other pass
(a prompt, a prefix-cache row) holds prompt tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, get_args

import torch
from torch.utils.hooks import RemovableHandle

from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp
from refusal_lens.interventions.features import FeatureIntervention
from refusal_lens.models import ChatModel

PositionScope = Literal["all", "prompt", "post_instruction", "generated"]
POSITION_SCOPES: tuple[str, ...] = get_args(PositionScope)


def check_scope(scope: str) -> PositionScope:
    if scope not in POSITION_SCOPES:
        raise ValueError(f"Unknown position scope {scope!r}: use one of {', '.join(POSITION_SCOPES)}.")
    return scope  # type: ignore[return-value]


def cached_length(args: tuple, kwargs: dict) -> int:
    """Tokens already in the key-value cache when a forward pass of the whole model starts."""
    for name in ("cache", "past_key_values"):  # transformers ≥ 5.2 says `cache`
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    mask = kwargs.get("attention_mask")
    if tokens is None or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return 0
    return max(mask.shape[1] - tokens.shape[1], 0)


def scope_columns(scope: PositionScope, seq_len: int, cached: int, n_post_instruction: int) -> slice | None:
    """The columns of a forward pass that ``scope`` edits: a slice, or None for none.

    ``cached`` tokens were seen by earlier passes: a pass with ``cached > 0`` continues a
    generation, so all of its columns are generated tokens.
    """
    generated = cached > 0
    if scope == "all":
        return slice(0, seq_len)
    if scope == "generated":
        return slice(0, seq_len) if generated else None
    if generated:
        return None
    if scope == "prompt":
        return slice(0, seq_len)
    return slice(max(seq_len - n_post_instruction, 0), seq_len)


class ScopedFeatureIntervention(FeatureIntervention):
    """``FeatureIntervention`` at the positions of ``scope`` only (see the module's docstring).

    Row masks (``for_rows``) still apply. An explicit ``position_mask`` is the parent's
    fixed-shape form; a scope replaces it.
    """

    def __init__(self, saes, features: Iterable[FeatureKey] | Mapping[int, Sequence[int]],
                 op: FeatureOp | None = None, *, scope: PositionScope = "all",
                 row_masks: Mapping[int, torch.Tensor] | None = None):
        self.scope = check_scope(scope)
        super().__init__(saes, features, op, row_masks=row_masks)
        self.n_post_instruction = 0
        self._columns: slice | None = slice(None)

    def attach(self, chat_model: ChatModel) -> list[RemovableHandle]:
        self.n_post_instruction = chat_model.n_post_instruction_tokens

        def read_pass(_module, args, kwargs):
            tokens = kwargs.get("input_ids", args[0] if args else None)
            if tokens is None:
                tokens = kwargs["inputs_embeds"]
            self._set_columns(scope_columns(self.scope, tokens.shape[1], cached_length(args, kwargs),
                                            self.n_post_instruction), tokens.shape[1])

        handle = chat_model.model.register_forward_pre_hook(read_pass, with_kwargs=True)
        return [handle, *super().attach(chat_model)]

    def _set_columns(self, columns: slice | None, seq_len: int) -> None:
        self._columns = columns
        if columns is None or (columns.start == 0 and columns.stop == seq_len):
            self.position_mask = None  # nothing or everything: no mask to build
        else:
            mask = torch.zeros((1, seq_len), dtype=torch.bool)
            mask[:, columns] = True
            self.position_mask = mask

    def edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if self._columns is None:
            return x
        return super().edit(layer, x)

    def describe(self) -> dict:
        return {**super().describe(), "positions": self.scope}
