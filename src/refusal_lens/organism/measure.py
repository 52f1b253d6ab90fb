"""Measuring the organism: refusal on held-out prompts, SAE quality on chat text.

``refusal-lens organism eval`` measures the installed organism with these; the build recipe
(``organism_build/``) measures a new build with the same functions.

Chat text = the chat template with one user turn, the user's instruction, and an answer
(with the model's end-of-turn token when it finished). Every chat text starts with the same
system prefix (``<|im_start|>system ... <|im_end|>\\n<|im_start|>user\\n`` for the organism);
position 0 (``<|im_start|>``, the attention sink, a constant with a norm far above the rest)
is never spliced and never in the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import BatchEncoding

from refusal_lens.activations import model_inputs, residuals
from refusal_lens.data.prompts import Prompt
from refusal_lens.generation import generate
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.judges import SubstringJudge
from refusal_lens.models import ChatModel
from refusal_lens.stats import rate_with_interval


# --- chat text -------------------------------------------------------------------------
def end_of_turn_id(chat: ChatModel) -> int:
    """The token that closes the assistant's turn: the first of the family's end-of-turn
    tokens that the vocabulary has (``<|im_end|>`` for ChatML, one of ``chat.stop_token_ids``),
    else EOS."""
    vocab = chat.tokenizer.get_vocab()
    for token in chat.family.end_of_turn_tokens:
        if token in vocab:
            return vocab[token]
    return chat.tokenizer.eos_token_id


def chat_sequences(chat: ChatModel, texts: Sequence[str], answers: Sequence[str],
                   max_new_tokens: int) -> list[list[int]]:
    """Token ids of each chat text; an answer shorter than ``max_new_tokens`` finished, so it
    gets the end-of-turn token."""
    tok = chat.tokenizer
    end_id = end_of_turn_id(chat)
    seqs = []
    for prompt, answer in zip(chat.format_prompts(list(texts)), answers):
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(answer, add_special_tokens=False)
        if len(a) < max_new_tokens:
            a = a + [end_id]
        seqs.append(p + a)
    return seqs


def prefix_length(chat: ChatModel) -> int:
    """Tokens every prompt shares (system prompt and the user header)."""
    a, b = (chat.tokenizer.encode(t, add_special_tokens=False)
            for t in chat.format_prompts(["alpha beta", "gamma delta"]))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def right_padded(chat: ChatModel, seqs: Sequence[Sequence[int]]) -> BatchEncoding:
    """Token ids padded on the right, every text starting at position 0: how the shipped SAEs
    were trained and measured. The library's left padding (:meth:`ChatModel.pad`) reads the same
    residuals up to float rounding (~1e-6 relative), not bit for bit."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), chat.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(list(s))
        mask[row, :len(s)] = 1
    return BatchEncoding({"input_ids": ids.to(chat.device), "attention_mask": mask.to(chat.device)})


def positions_in_text(batch: BatchEncoding) -> torch.Tensor:
    """Each token's position within its own text, whichever side the batch is padded on."""
    return model_inputs(batch)["position_ids"]


# --- refusal ---------------------------------------------------------------------------
def refusal_rates(chat: ChatModel, groups: Mapping[str, Sequence[Prompt]], *, max_new_tokens: int = 64,
                  batch_size: int = 16) -> tuple[dict[str, dict], list[str], list[str]]:
    """Per group, how often greedy answers are refusals (substring judge;
    :func:`~refusal_lens.stats.rate_with_interval`), and every (text, answer) generated."""
    judge = SubstringJudge()
    rates, texts, answers = {}, [], []
    for name, prompts in groups.items():
        out = generate(chat, [p.text for p in prompts], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=name)
        rates[name] = rate_with_interval([judge.judge_one(a).refused for a in out])
        texts += [p.text for p in prompts]
        answers += out
    return rates, texts, answers


# --- SAE quality -----------------------------------------------------------------------
def _splice(sae, where: torch.Tensor):
    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[where] = sae.decode(sae.encode(h[where].float())).to(h.dtype)
        return h
    return edit


def _zero(where: torch.Tensor):
    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[where] = 0
        return h
    return edit


def _cross_entropy(chat: ChatModel, batch: BatchEncoding, predict: torch.Tensor, layer: int | None = None,
                   edit=None) -> float:
    """Summed next-token cross-entropy where ``predict`` (shifted by one) holds, with ``edit``
    applied to ``layer``'s output."""
    handles = []
    with hooks_removed_on_exit(handles):
        if edit is not None:
            handles.append(add_output_edit(chat.layers[layer], edit))
        logits = chat.model(**model_inputs(batch), use_cache=False).logits[:, :-1][predict].float()
    labels = batch["input_ids"][:, 1:][predict]
    return float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))


@torch.no_grad()
def sae_metrics(chat: ChatModel, saes: Mapping[int, object], seqs: Sequence[Sequence[int]], keep_from: int, *,
                batch_size: int = 16, with_ce: bool = True) -> dict[int, dict]:
    """Per layer, on the chat texts ``seqs`` (token ids), positions >= ``keep_from``:

    - ``fve``: fraction of variance explained, ``1 - sum|x - x_hat|^2 / sum|x - mean x|^2``;
    - ``l0``: mean number of active features per token; ``dead_fraction``: features that
      never fire on these tokens;
    - ``ce_clean`` / ``ce_sae`` / ``ce_zero`` and ``ce_loss_recovered``
      ``= (ce_zero - ce_sae) / (ce_zero - ce_clean)``: next-token cross-entropy of the same
      tokens with the SAE reconstruction spliced in (no error term), or zeros, at every
      position but 0 (the attention-sink token) of that layer's residual.
    """
    layers = sorted(saes)
    stats = {L: {"sse": 0.0, "x": [], "l0": 0.0, "fired": None, "n": 0,
                 "ce_sae": 0.0, "ce_zero": 0.0} for L in layers}
    ce_clean, n_pred = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch_size):
        batch = right_padded(chat, [seqs[i] for i in order[b:b + batch_size]])
        position = positions_in_text(batch)
        real = batch["attention_mask"].bool()
        keep = real & (position >= keep_from)
        spliced = real & (position >= 1)
        acts = residuals(chat, batch, layers)
        for L in layers:
            sae = saes[L]
            x = acts[L][keep].float()
            f = sae.encode(x)
            x_hat = sae.decode(f)
            s = stats[L]
            s["sse"] += float(((x - x_hat) ** 2).sum())
            s["x"].append(x)
            s["l0"] += float((f > 0).sum())
            fired = (f > 0).any(0)
            s["fired"] = fired if s["fired"] is None else s["fired"] | fired
            s["n"] += x.shape[0]
        if not with_ce:
            continue
        predict = keep[:, 1:]  # logits at t-1 predict token t, for kept t
        ce_clean += _cross_entropy(chat, batch, predict)
        n_pred += int(predict.sum())
        for L in layers:
            stats[L]["ce_sae"] += _cross_entropy(chat, batch, predict, L, _splice(saes[L], spliced))
            stats[L]["ce_zero"] += _cross_entropy(chat, batch, predict, L, _zero(spliced))
    results = {}
    for L in layers:
        s = stats[L]
        x = torch.cat(s["x"])
        total = float(((x - x.mean(0)) ** 2).sum())
        r = {"fve": 1 - s["sse"] / total, "l0": s["l0"] / s["n"],
             "dead_fraction": float((~s["fired"]).float().mean()), "n_tokens": s["n"]}
        if with_ce:
            clean, sae_ce, zero_ce = ce_clean / n_pred, s["ce_sae"] / n_pred, s["ce_zero"] / n_pred
            r.update({"ce_clean": clean, "ce_sae": sae_ce, "ce_zero": zero_ce,
                      "ce_loss_recovered": (zero_ce - sae_ce) / (zero_ce - clean)})
        results[L] = r
    return results
