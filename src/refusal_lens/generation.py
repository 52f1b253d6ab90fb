"""Greedy generation under any intervention, stopping on every end-of-turn token."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from refusal_lens.interventions import Intervention, intervene
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched

DEFAULT_BATCH = 16  # prompts generated together on the CPU (on a GPU: the largest that fits)


@torch.no_grad()
def generate_batch(chat_model: ChatModel, instructions: Sequence[str], *, max_new_tokens: int = 64,
                   interventions: Sequence[Intervention] = ()) -> list[str]:
    batch = chat_model.tokenize(list(instructions), max_new_tokens=max_new_tokens)
    with intervene(chat_model, *interventions):
        output = chat_model.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=chat_model.stop_token_ids, pad_token_id=chat_model.tokenizer.pad_token_id,
            temperature=None, top_p=None, top_k=None)
    new_tokens = output[:, batch["input_ids"].shape[1]:]
    return chat_model.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def generate(chat_model: ChatModel, instructions: Sequence[str], *, max_new_tokens: int = 64,
             batch_size: int | None = None, interventions: Sequence[Intervention] = (),
             progress: str | None = None) -> list[str]:
    """Greedy completions of each instruction (the chat template applied).

    ``batch_size`` None: the largest batch that fits the GPU, ``DEFAULT_BATCH`` on the CPU. In a
    data-parallel run the instructions are split over the processes and every process gets
    every completion."""

    def complete(chunk: list[str]) -> list[str]:
        return generate_batch(chat_model, chunk, max_new_tokens=max_new_tokens, interventions=interventions)

    return run_batched(chat_model, "generate", instructions, complete, batch_size=batch_size,
                       default=DEFAULT_BATCH, progress=progress,
                       tokens=lambda part: longest_prompt(chat_model, part, max_new_tokens))
