"""Rerun only the layers a search edits: cache the residual entering the first edited layer.

Every evaluation in a feature search edits layers ≥ ``start`` only, so the stream below is
the same for every candidate set: it is computed once per prompt and each evaluation runs
the upper layers from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from refusal_lens.activations import model_inputs
from refusal_lens.hooks import hooks_removed_on_exit
from refusal_lens.interventions import Intervention, intervene
from refusal_lens.models import ChatModel, position_ids_for


class _Stop(Exception):
    pass


@dataclass
class PrefixCache:
    """The residual stream entering block ``start`` (``[prompts, seq, d]``) and its attention mask."""

    start: int
    hidden: torch.Tensor
    attention_mask: torch.Tensor


@torch.no_grad()
def build_prefix_caches(chat_model: ChatModel, instructions: Sequence[str],
                        starts: Sequence[int]) -> dict[int, PrefixCache]:
    """The residual entering each block of ``starts``, from one forward pass that stops at the
    highest."""
    batch = chat_model.tokenize(list(instructions))
    captured: dict[int, torch.Tensor] = {}
    last = max(starts)

    def capture_at(start: int):
        def capture(_module, args, kwargs):
            captured[start] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            if start == last:
                raise _Stop
        return capture

    handles = [chat_model.layers[start].register_forward_pre_hook(capture_at(start), with_kwargs=True)
               for start in sorted(set(starts))]
    with hooks_removed_on_exit(handles):
        try:
            chat_model.model(**model_inputs(batch), use_cache=False)
        except _Stop:
            pass
    return {start: PrefixCache(start, captured[start], batch["attention_mask"]) for start in starts}


def build_prefix_cache(chat_model: ChatModel, instructions: Sequence[str], start: int) -> PrefixCache:
    return build_prefix_caches(chat_model, instructions, [start])[start]


@contextmanager
def upper_layers_only(chat_model: ChatModel, start: int) -> Iterator[None]:
    """Make the model run blocks ``start..`` only, with per-layer config lists sliced to match."""
    inner = chat_model.decoder
    config = inner.config
    saved_layers, saved_count = inner.layers, config.num_hidden_layers
    saved_types = getattr(config, "layer_types", None)
    inner.layers = nn.ModuleList(list(chat_model.layers)[start:])
    config.num_hidden_layers = saved_count - start
    if isinstance(saved_types, list):
        config.layer_types = saved_types[start:]
    try:
        yield
    finally:
        inner.layers = saved_layers
        config.num_hidden_layers = saved_count
        if isinstance(saved_types, list):
            config.layer_types = saved_types


def _embedding_scale(chat_model: ChatModel) -> float:
    """transformers < 5 scaled Gemma's ``inputs_embeds`` inside the model's forward."""
    embed = chat_model.model.get_input_embeddings()
    if chat_model.text_config.model_type.startswith("gemma") and not hasattr(embed, "embed_scale"):
        return chat_model.d_model ** 0.5
    return 1.0


def lowest_edited_layer(intervention: Intervention) -> int:
    """The first layer an intervention touches (0 when it could touch any)."""
    if hasattr(intervention, "features"):
        return min(intervention.features)
    if hasattr(intervention, "layer"):
        return intervention.layer
    return 0


@torch.no_grad()
def last_logits_from_cache(chat_model: ChatModel, cache: PrefixCache, rows: torch.Tensor,
                           interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Last-position logits for prompts ``rows`` (indices into the cache; repeats allowed)."""
    for intervention in interventions:
        lowest = lowest_edited_layer(intervention)
        if lowest < cache.start:
            raise ValueError(f"{type(intervention).__name__} edits layer {lowest}, below the cached "
                             f"layer {cache.start}: build the cache at layer {lowest} or lower.")
    # on the device inputs go to, with the mask: a model split over devices moves it on from there
    hidden = cache.hidden.index_select(0, rows.to(cache.hidden.device)).to(chat_model.device)
    hidden = hidden / _embedding_scale(chat_model)
    mask = cache.attention_mask.index_select(0, rows.to(cache.attention_mask.device))
    with intervene(chat_model, *interventions), upper_layers_only(chat_model, cache.start):
        out = chat_model.model(inputs_embeds=hidden, attention_mask=mask, position_ids=position_ids_for(mask),
                               use_cache=False, logits_to_keep=1)
    return out.logits[:, -1]
