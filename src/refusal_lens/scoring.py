"""The refusal score [A24] (METHOD.md §1): log-odds of a refusal token at the last prompt position;
the next-token KL divergence between two runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from refusal_lens.activations import model_inputs
from refusal_lens.interventions import Intervention, intervene
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched

DEFAULT_BATCH = 16  # prompts a forward pass on the CPU (on a GPU: the largest that fits)


def refusal_score_from_logits(logits: torch.Tensor, refusal_token_ids: Sequence[int]) -> torch.Tensor:
    """``log p - log(1 - p)``, ``p`` = total probability of the refusal tokens, computed stably."""
    logits = logits.float()
    is_refusal = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_refusal[list(refusal_token_ids)] = True
    log_refusal = logits.masked_fill(~is_refusal, float("-inf")).logsumexp(-1)
    log_other = logits.masked_fill(is_refusal, float("-inf")).logsumexp(-1)
    return log_refusal - log_other


def next_token_kl(base_logits: torch.Tensor, edited_logits: torch.Tensor) -> torch.Tensor:
    """``KL(base || edited)`` of the next-token distributions, one value per row, in float32."""
    base = base_logits.float().log_softmax(-1)
    edited = edited_logits.float().log_softmax(-1)
    return (base.exp() * (base - edited)).sum(-1)


@torch.no_grad()
def last_position_logits(chat_model: ChatModel, instructions: Sequence[str],
                         interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Next-token logits at the last prompt position, ``[batch, vocab]``, one forward pass."""
    batch = chat_model.tokenize(list(instructions))
    with intervene(chat_model, *interventions):
        out = chat_model.model(**model_inputs(batch), use_cache=False, logits_to_keep=1)
    return out.logits[:, -1]


def refusal_scores(chat_model: ChatModel, instructions: Sequence[str], *, batch_size: int | None = None,
                   interventions: Sequence[Intervention] = (), progress: str | None = None) -> torch.Tensor:
    """The refusal score of every instruction (``> 0``: about to refuse), on the CPU.

    ``batch_size`` None: the largest batch that fits the GPU, ``DEFAULT_BATCH`` on the CPU. In a
    data-parallel run the instructions are split over the processes and every process gets
    every score."""

    def score(chunk: list[str]) -> torch.Tensor:
        logits = last_position_logits(chat_model, chunk, interventions)
        return refusal_score_from_logits(logits, chat_model.refusal_token_ids).cpu()

    scores = run_batched(chat_model, "refusal_scores", instructions, score, batch_size=batch_size,
                         default=DEFAULT_BATCH, tokens=lambda part: longest_prompt(chat_model, part),
                         progress=progress)
    return torch.cat(scores) if scores else torch.empty(0)
