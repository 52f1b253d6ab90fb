"""Forward passes and greedy generation with some features edited and others pinned to their
clean value (``interventions/pin.py``), on twin rows; without pinned features, an ordinary pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList

from refusal_lens.activations import model_inputs
from refusal_lens.interventions import (
    CopyEditedTokens,
    FeatureIntervention,
    FeatureKey,
    FeatureOp,
    Intervention,
    PinnedFeatures,
    edited_rows_only,
    intervene,
    twin_batch,
)
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_score_from_logits

DEFAULT_BATCH = 16  # prompts a forward pass on the CPU (on a GPU: the largest that fits; twice the rows with a pin)


def _interventions(saes: SAESet, edit: Sequence[FeatureKey], op: FeatureOp, pin: Sequence[FeatureKey],
                   n_rows: int) -> list[Intervention]:
    if not pin:
        return [FeatureIntervention(saes, edit, op)] if edit else []
    edits = [edited_rows_only(saes, edit, n_rows, op)] if edit else []
    return [*edits, PinnedFeatures(saes, pin, n_rows)]  # the pin last: it sees the edits of its layers


@torch.no_grad()
def pinned_last_logits(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], edit: Sequence[FeatureKey],
                       op: FeatureOp, pin: Sequence[FeatureKey] = ()) -> torch.Tensor:
    """Last-position logits ``[n, vocab]`` with ``edit`` under ``op`` and ``pin`` held at their clean values."""
    batch = chat_model.tokenize(list(instructions))
    n = len(instructions)
    if pin:
        batch = twin_batch(batch)
    with intervene(chat_model, *_interventions(saes, edit, op, pin, n)):
        logits = chat_model.model(**model_inputs(batch), use_cache=False, logits_to_keep=1).logits[:, -1]
    return logits[:n]


def pinned_refusal_scores(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str],
                          edit: Sequence[FeatureKey], op: FeatureOp, pin: Sequence[FeatureKey] = (),
                          batch_size: int | None = None) -> torch.Tensor:
    """The refusal score of each instruction under the edit, with ``pin`` held clean (CPU);
    ``batch_size`` None: the largest batch that fits the GPU, ``DEFAULT_BATCH`` on the CPU."""

    def score(chunk: list[str]) -> torch.Tensor:
        logits = pinned_last_logits(chat_model, saes, chunk, edit, op, pin)
        return refusal_score_from_logits(logits, chat_model.refusal_token_ids).cpu()

    scores = run_batched(chat_model, "pinned_refusal_scores", list(instructions), score, batch_size=batch_size,
                         default=DEFAULT_BATCH, tokens=lambda part: longest_prompt(chat_model, part))
    return torch.cat(scores) if scores else torch.empty(0)


@torch.no_grad()
def pinned_generate_batch(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str],
                          edit: Sequence[FeatureKey], op: FeatureOp, pin: Sequence[FeatureKey] = (),
                          max_new_tokens: int = 64) -> list[str]:
    """Greedy answers under the edit; a pinned feature at a generated position takes its value in
    the unedited model on the same text (the twins copy the edited rows' tokens)."""
    n = len(instructions)
    batch = chat_model.tokenize(list(instructions), max_new_tokens=max_new_tokens)
    processors = LogitsProcessorList()
    if pin:
        batch = twin_batch(batch)
        processors.append(CopyEditedTokens(n))
    with intervene(chat_model, *_interventions(saes, edit, op, pin, n)):
        output = chat_model.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, logits_processor=processors,
            eos_token_id=chat_model.stop_token_ids, pad_token_id=chat_model.tokenizer.pad_token_id,
            temperature=None, top_p=None, top_k=None)
    new_tokens = output[:n, batch["input_ids"].shape[1]:]
    return chat_model.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def pinned_generate(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str], edit: Sequence[FeatureKey],
                    op: FeatureOp, pin: Sequence[FeatureKey] = (), *, max_new_tokens: int = 64,
                    batch_size: int | None = None, progress: str | None = None) -> list[str]:
    """``pinned_generate_batch`` a batch at a time (``batch_size`` as ``pinned_refusal_scores``)."""
    return run_batched(chat_model, "pinned_generate", list(instructions),
                       lambda chunk: pinned_generate_batch(chat_model, saes, chunk, edit, op, pin, max_new_tokens),
                       batch_size=batch_size, default=DEFAULT_BATCH, progress=progress,
                       tokens=lambda part: longest_prompt(chat_model, part, max_new_tokens))
