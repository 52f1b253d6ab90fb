"""The attribution metric (METHOD.md §5) and the forward passes that cache what it compares.

``m = logit[jailbreak token] - logit[refusal token]`` at the last prompt position, where the
jailbreak token is each prompt's argmax next token under directional ablation at all layers,
among the tokens that are not refusal tokens: a patched model that still starts with its
refusal token ("I'd be glad to...") would otherwise give ``m ≡ 0`` and attribute nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from transformers import BatchEncoding

from refusal_lens.activations import model_inputs
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.interventions import Intervention, intervene
from refusal_lens.models import ChatModel


def metric_from_logits(logits: torch.Tensor, jailbreak: torch.Tensor, refusal: int) -> torch.Tensor:
    """``logits[r, jailbreak[r]] - logits[r, refusal]`` for each row of ``[rows, vocab]`` logits."""
    return logits.gather(-1, jailbreak[:, None]).squeeze(-1) - logits[:, refusal]


def jailbreak_tokens(patched_logits: torch.Tensor, refusal_ids: Sequence[int]) -> torch.Tensor:
    """Per row of ``[rows, vocab]`` logits, the argmax over the tokens not in ``refusal_ids``."""
    allowed = patched_logits.clone()
    allowed[:, list(refusal_ids)] = float("-inf")
    return allowed.argmax(-1)


@contextmanager
def contiguous_head_input(chat_model: ChatModel) -> Iterator[None]:
    """The output head gets a contiguous input while the block runs (hook removed on exit).

    With ``logits_to_keep=1`` transformers hands the head ``hidden[:, -1:, :]``, a view whose
    rows lie ``seq`` apart. ``torch.matmul`` folds a 3-d input into one matrix product only
    when its leading dimensions are contiguous, so on that view it runs a batched product
    against the weight expanded over the rows: the whole head weight is read once per row,
    forward and backward (Gemma-2-2B on an H200, 100 rows: ~15 ms a call, a third of a
    forward pass). A contiguous ``[rows, 1, d]`` copy makes it one product; same numbers.
    """
    head = chat_model.model.get_output_embeddings()
    handles = []
    with hooks_removed_on_exit(handles):
        if head is not None:
            handles.append(head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:])))
        yield


def forward_capturing(chat_model: ChatModel, batch: BatchEncoding, layers: Sequence[int],
                      interventions: Sequence[Intervention] = (), offsets: Mapping[int, torch.Tensor] | None = None
                      ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """One forward pass: the block outputs at ``layers`` (after the interventions' edits, i.e. the
    stream the next block reads) and the last-position logits.

    ``offsets`` (``{layer: [batch, seq, d]}``, zeros that require grad) are added to those
    block outputs, which makes each one a point the gradient of the logits can be read at
    while it still flows on to the layers below (attribution patching).
    """
    captured: dict[int, torch.Tensor] = {}
    home = chat_model.device  # of a model split over devices: where the batch and its mask are

    def capture(layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if offsets is not None:
            hidden = hidden + offsets[layer].to(hidden.device)  # the gradient crosses back to the offset
        captured[layer] = hidden.detach().to(home, copy=True)
        return hidden if offsets is not None else None

    handles = []
    with intervene(chat_model, *interventions), hooks_removed_on_exit(handles), contiguous_head_input(chat_model):
        handles += [add_output_edit(chat_model.layers[L], lambda h, L=L: capture(L, h)) for L in layers]
        out = chat_model.model(**model_inputs(batch), use_cache=False, logits_to_keep=1)
    return captured, out.logits[:, -1]
