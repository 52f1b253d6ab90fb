"""A chat model's batched operations: batches sized to its device, work split over processes.

``run_batched`` is what every batched operation of the library calls: its items are split
over the processes of a data-parallel run (``refusal_lens.distributed``), and each process
runs its share in chunks sized by ``refusal_lens.batching``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from refusal_lens import distributed
from refusal_lens.batching import BatchKey, length_bucket, map_batches, memory_probe
from refusal_lens.models.chat_model import ChatModel

T = TypeVar("T")


def longest_prompt(chat_model: ChatModel, instructions: Sequence[str], extra_tokens: int = 0) -> int:
    """Tokens of the longest instruction with its chat template, plus ``extra_tokens``."""
    if not instructions:
        return extra_tokens
    ids = chat_model.tokenizer(list(instructions), add_special_tokens=False)["input_ids"]
    template = chat_model.n_pre_instruction_tokens + chat_model.n_post_instruction_tokens
    return template + max(len(i) for i in ids) + extra_tokens


def batch_key(chat_model: ChatModel, operation: str, tokens: int) -> BatchKey:
    return BatchKey(f"{chat_model.name}:{str(chat_model.dtype).removeprefix('torch.')}", str(chat_model.device),
                    operation, length_bucket(tokens))


def run_batched(chat_model: ChatModel, operation: str, items: Sequence[T], run: Callable[[list[T]], Any], *,
                batch_size: int | None, default: int, tokens: Callable[[list[T]], int],
                progress: str | None = None, shard: bool = True) -> list:
    """``run`` on chunks of ``items``, the chunks sized for ``operation`` on the model's device
    (``batch_size`` None: automatically, ``default`` on the CPU) and, with ``shard``, the items
    split over the processes of a data-parallel run, whose results then come back from every
    process, in order. ``run`` returns a list (one result per item: the results are one flat
    list) or a tensor (one a chunk: a list of them); with ``shard``, the items' results must be
    tensors or JSON-able. ``tokens(items)`` is the longest sequence an item makes (a batch
    size is remembered per length bucket)."""

    def local(part: list[T]) -> list:
        results = map_batches(part, run, batch_size=batch_size, default=default,
                              key=lambda: batch_key(chat_model, operation, tokens(part)),
                              memory=memory_probe(chat_model.devices), progress=progress)
        if results and all(isinstance(r, list) for r in results):
            return [item for chunk in results for item in chunk]
        return results

    if not shard or not distributed.active():
        return local(list(items))
    return distributed.map_shards(items, local)
