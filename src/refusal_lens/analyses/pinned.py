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
from refusal_lens.progress import batches
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_score_from_logits


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
                          batch_size: int = 16) -> torch.Tensor:
    """The refusal score of each instruction under the edit, with ``pin`` held clean (CPU)."""
    scores = [refusal_score_from_logits(pinned_last_logits(chat_model, saes, chunk, edit, op, pin),
                                        chat_model.refusal_token_ids).cpu()
              for chunk in batches(list(instructions), batch_size)]
    return torch.cat(scores)


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
                    batch_size: int = 16, progress: str | None = None) -> list[str]:
    answers: list[str] = []
    for chunk in batches(list(instructions), batch_size, progress):
        answers += pinned_generate_batch(chat_model, saes, chunk, edit, op, pin, max_new_tokens)
    return answers
