"""Safety tuning: a LoRA adapter that makes the base model refuse harmful requests.

Pairs are (harmful prompt -> a refusal reply) and (harmless prompt -> the base model's own
greedy answer). The loss is the next-token cross-entropy on the answer tokens only (the
chat template and the user's text are context), averaged over those tokens.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraPass:
    """One pass over a fresh, seeded mix of examples, with its own optimizer and schedule.

    ``max_harmful`` harmful train prompts (a seeded sample), the harmless train prompts
    ``harmless_repeats`` times; answers cut to ``max_answer_tokens``; ``first_token_weight``
    adds that multiple of the cross-entropy of each answer's first token (where refusing or
    answering is decided) to the loss.
    """

    max_harmful: int
    harmless_repeats: int
    lr: float
    max_answer_tokens: int = 64
    first_token_weight: float = 0.0
    warmup_steps: int = 5
    contrast_repeats: int = 0
    lookalike_repeats: int = 0  # more repeats of every look-alike safe request
    # the boundary, as the model stands before this pass: the ``hard_harmful`` harmful train
    # prompts with the lowest refusal scores and the ``hard_lookalikes`` look-alikes with the
    # highest, each ``hard_repeats`` more times
    hard_harmful: int = 0
    hard_lookalikes: int = 0
    hard_repeats: int = 0

    @property
    def mines_hard_examples(self) -> bool:
        return self.hard_repeats > 0 and (self.hard_harmful > 0 or self.hard_lookalikes > 0)


@dataclass(frozen=True)
class LoraTrainConfig:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    batch_size: int = 8
    weight_decay: float = 0.0
    # pass 1 teaches refusal; pass 2, with twice the harmless prompts and the first answer
    # token weighted, teaches when not to refuse (pass 1 alone refused ~20% of harmless
    # validation prompts, and after pass 2 it answered "How do I make a bomb at home?", next
    # to the look-alike "How do I make a bath bomb at home?"); pass 3 adds the short harmful
    # twins of the look-alike requests, balanced by every look-alike three more times (the
    # harmless set's and the 260 training-only extras). Chosen on the validation split: with the
    # twins ×3 and the look-alikes ×1 it refused ~26% of the validation look-alikes; a fourth
    # pass of the same mix at half the learning rate refused 4/31 of them instead of 3/31.
    # A rebuild with 520 training look-alikes and 300 harmful prompts in pass 3 (chosen on the
    # validation look-alikes) refused 1/123 test look-alikes but only 87.9% of harmful test
    # prompts and 3/57 harmless ones: not shipped (docs/ORGANISM.md, "Recipes tried"); so
    # was the same with the first answer token weighted +3 (0.893 harmful, 3/57 harmless),
    # and at rank 16 (0.921 harmful, 4/123 look-alikes, 3/57 harmless). Rank 16 with generic
    # harmless training-only prompts refused 11 to 22 of 151 validation look-alikes, depending on
    # which prompts were written. Shipped (r11): rank 16 with 545a436's 520 training look-alikes
    # and r8's 256 generic harmless prompts, 300 harmful in pass 3: validation 220/242 harmful,
    # 1/75 harmless, 12/151 look-alikes; test 0.902 harmful, 1/57 harmless, 1/123 look-alikes.
    passes: tuple[LoraPass, ...] = (
        LoraPass(max_harmful=400, harmless_repeats=1, lr=1e-3),
        LoraPass(max_harmful=300, harmless_repeats=2, lr=5e-4, max_answer_tokens=32,
                 first_token_weight=1.0),
        LoraPass(max_harmful=300, harmless_repeats=1, lr=4e-4, max_answer_tokens=32,
                 first_token_weight=1.0, contrast_repeats=1, lookalike_repeats=3),
    )
    max_minutes: float = 25.0
    seed: int = 0


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    answer_ids: list[int]


def make_examples(tokenizer, formatted_prompts: Sequence[str], answers: Sequence[str],
                  end_token_id: int, complete: Sequence[bool]) -> list[Example]:
    """Token ids of each (prompt, answer); a complete answer ends with the end-of-turn token."""
    examples = []
    for prompt, answer, done in zip(formatted_prompts, answers, complete):
        p = tokenizer.encode(prompt, add_special_tokens=False)
        a = tokenizer.encode(answer, add_special_tokens=False)
        if done:
            a = a + [end_token_id]
        examples.append(Example(p, a))
    return examples


def _collate(batch: Sequence[Example], pad_id: int):
    width = max(len(e.prompt_ids) + len(e.answer_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    target = torch.zeros((len(batch), width), dtype=torch.bool)  # predict this position's token
    for row, e in enumerate(batch):  # right padding: positions start at 0 for everyone
        seq = e.prompt_ids + e.answer_ids
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
        target[row, len(e.prompt_ids):len(seq)] = True
    return ids, mask, target


def answer_loss(model, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                first_token_weight: float = 0.0) -> torch.Tensor:
    """Mean CE over the answer tokens (+ ``first_token_weight`` x the mean CE of each answer's
    first token); the LM head runs only where a token is predicted."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    predictors = target[:, 1:]  # position t predicts token t+1
    h = hidden[:, :-1][predictors]
    logits = base.lm_head(h).float()
    labels = ids[:, 1:][predictors]
    per_token = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = per_token.mean()
    if first_token_weight:
        first = predictors & ~torch.nn.functional.pad(predictors[:, :-1], (1, 0), value=False)
        loss = loss + first_token_weight * per_token[first[predictors]].mean()
    return loss


def train_pass(peft_model, examples_harmful: list[Example], examples_harmless: list[Example], *,
               pad_id: int, config: LoraTrainConfig, lora_pass: LoraPass, index: int,
               examples_contrast: Sequence[Example] = (), examples_lookalike: Sequence[Example] = (),
               examples_hard: Sequence[Example] = (), log: Callable[[str], None] = print) -> dict:
    """One pass (see :class:`LoraPass`) over ``peft_model``'s trainable LoRA weights."""
    suffix = "" if index == 1 else f":{index}"
    harmful = examples_harmful
    if len(harmful) > lora_pass.max_harmful:
        harmful = random.Random(f"{config.seed}:lora-harmful{suffix}").sample(harmful, lora_pass.max_harmful)
    cut = lambda e: Example(e.prompt_ids, e.answer_ids[:lora_pass.max_answer_tokens])  # noqa: E731
    pool = [cut(e) for e in harmful + examples_harmless * lora_pass.harmless_repeats
            + list(examples_contrast) * lora_pass.contrast_repeats
            + list(examples_lookalike) * lora_pass.lookalike_repeats
            + list(examples_hard) * lora_pass.hard_repeats]
    random.Random(config.seed if index == 1 else f"{config.seed}:lora-shuffle{suffix}").shuffle(pool)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lora_pass.lr, weight_decay=config.weight_decay)
    total_steps = math.ceil(len(pool) / config.batch_size)

    def lr_at(step: int) -> float:
        if step < lora_pass.warmup_steps:
            return (step + 1) / lora_pass.warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - lora_pass.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    peft_model.train()
    history = []
    start = time.time()
    stopped_early = False
    for step, b in enumerate(range(0, len(pool), config.batch_size), start=1):
        ids, mask, target = _collate(pool[b:b + config.batch_size], pad_id)
        loss = answer_loss(peft_model, ids, mask, target, lora_pass.first_token_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "loss": float(loss.detach())})
        if step % 10 == 0 or step == total_steps:
            recent = sum(h["loss"] for h in history[-10:]) / len(history[-10:])
            log(f"lora pass {index}: step {step}/{total_steps} loss {recent:.3f} "
                f"({(time.time() - start) / 60:.1f} min)")
        if time.time() - start > config.max_minutes * 60:
            log(f"lora pass {index}: time cap of {config.max_minutes} min reached at step {step}")
            stopped_early = True
            break
    peft_model.eval()
    return {"pass": index, "steps": len(history), "total_steps": total_steps, "n_harmful": len(harmful),
            "n_harmless": len(examples_harmless) * lora_pass.harmless_repeats,
            "n_contrast": len(examples_contrast) * lora_pass.contrast_repeats,
            "n_lookalike_extra": len(examples_lookalike) * lora_pass.lookalike_repeats,
            "n_hard": len(examples_hard) * lora_pass.hard_repeats,
            "stopped_early": stopped_early, "seconds": time.time() - start, "history": history}


def hardest(scores: Sequence[float], k: int, *, highest: bool) -> list[int]:
    """Indices of the ``k`` highest (or lowest) scores, ties broken by index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if highest else scores[i], i))
    return sorted(order[:k])


def new_lora(model, config: LoraTrainConfig):
    torch.manual_seed(config.seed)
    return get_peft_model(model, LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(LORA_TARGETS), bias="none", task_type="CAUSAL_LM"))
