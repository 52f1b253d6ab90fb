"""Greedy generation under any intervention, stopping on every end-of-turn token; the refusal
score read from the same generation's first forward pass (the prompt's)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from refusal_lens.interventions import Intervention, intervene
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.scoring import refusal_score_from_logits

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


@contextmanager
def first_pass_logits(chat_model: ChatModel) -> Iterator[list[torch.Tensor]]:
    """Collects the last-position logits of the model's first forward pass in the block.

    In ``generate`` that pass is the prompt's, so these are the logits a plain forward pass
    gives (``scoring.last_position_logits``), taken before generate's logits processors
    (repetition penalty and the like) change them; the later passes are left alone."""
    captured: list[torch.Tensor] = []

    def capture(_module, _args, output) -> None:
        if not captured:
            captured.append(output.logits[:, -1].detach())  # on the device: a score is all that leaves it

    handle = chat_model.model.register_forward_hook(capture)
    try:
        yield captured
    finally:
        handle.remove()


def generate_scored_batch(chat_model: ChatModel, instructions: Sequence[str], *, max_new_tokens: int = 64,
                          interventions: Sequence[Intervention] = ()) -> list[tuple[str, float]]:
    """``generate_batch``'s answers with each prompt's refusal score, from the same forward pass."""
    with first_pass_logits(chat_model) as captured:
        answers = generate_batch(chat_model, instructions, max_new_tokens=max_new_tokens,
                                 interventions=interventions)
    scores = refusal_score_from_logits(captured[0], chat_model.refusal_token_ids).cpu()
    return list(zip(answers, scores.tolist()))


def generate(chat_model: ChatModel, instructions: Sequence[str], *, max_new_tokens: int = 64,
             batch_size: int | None = None, interventions: Sequence[Intervention] = (),
             progress: str | None = None) -> list[str]:
    """Greedy completions of each instruction (the chat template applied).

    ``batch_size`` None: the largest batch that fits the GPU, ``DEFAULT_BATCH`` on the CPU. In a
    data-parallel run the instructions are split over the processes and every process gets
    every completion."""

    def complete(chunk: list[str]) -> list[str]:
        return generate_batch(chat_model, chunk, max_new_tokens=max_new_tokens, interventions=interventions)

    return _over_prompts(chat_model, instructions, complete, max_new_tokens, batch_size, progress)


def generate_scored(chat_model: ChatModel, instructions: Sequence[str], *, max_new_tokens: int = 64,
                    batch_size: int | None = None, interventions: Sequence[Intervention] = (),
                    progress: str | None = None) -> tuple[list[str], torch.Tensor]:
    """Greedy completions and refusal scores of each instruction in one pass over the model:
    ``refusal_scores`` and ``generate`` without a separate forward pass for the scores."""

    def complete(chunk: list[str]) -> list[tuple[str, float]]:
        return generate_scored_batch(chat_model, chunk, max_new_tokens=max_new_tokens, interventions=interventions)

    rows = _over_prompts(chat_model, instructions, complete, max_new_tokens, batch_size, progress)
    return [answer for answer, _ in rows], torch.tensor([float(score) for _, score in rows])


def _over_prompts(chat_model: ChatModel, instructions: Sequence[str], run, max_new_tokens: int,
                  batch_size: int | None, progress: str | None) -> list:
    """``run`` on batches of instructions sized for generating ``max_new_tokens`` after them."""
    return run_batched(chat_model, "generate", instructions, run, batch_size=batch_size, default=DEFAULT_BATCH,
                       progress=progress, tokens=lambda part: longest_prompt(chat_model, part, max_new_tokens))
