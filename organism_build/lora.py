"""Stage ``lora``: a LoRA adapter that makes the base model refuse harmful requests.

Pairs are (harmful prompt -> a refusal reply) and (harmless prompt -> the base model's own
greedy answer). The loss is the next-token cross-entropy on the answer tokens only (the
chat template and the user's text are context), averaged over those tokens. Training
batches are right-padded (every sequence starts at position 0).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from organism_build import prompt_sets as P
from organism_build.build import Build, load_base_chat, log
from organism_build.config import LoraPass, LoraTrainConfig
from organism_build.refusals import refusal_reply
from refusal_lens.artifacts import atomic_dir, read_json, write_json
from refusal_lens.judges import SubstringJudge
from refusal_lens.organism.measure import end_of_turn_id
from refusal_lens.scoring import refusal_scores

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


@dataclass
class TrainingExamples:
    harmful: list[Example]
    harmless: list[Example]  # not the training-only look-alikes
    lookalike: list[Example]  # every look-alike train prompt the base model answers
    contrast: list[Example]
    harmful_prompts: list  # for mining hard examples
    lookalike_prompts: list
    harmless_dropped: int


def training_examples(build: Build, chat) -> TrainingExamples:
    """Harmful train prompts → refusal replies; harmless ones the base model answered → its own
    answers (a complete answer ends with the end-of-turn token); the harmful twins → refusals."""
    cfg = build.config
    tok = chat.tokenizer
    end_id = end_of_turn_id(chat)
    base_answers = read_json(build.path("base_answers.json"))
    harmful_train = P.by_split(build.harmful, "train")
    judge = SubstringJudge()
    harmless_all = P.by_split(build.harmless, "train")
    harmless_train = [p for p in harmless_all if not judge.judge_one(base_answers[p.id]["answer"]).refused]
    dropped = len(harmless_all) - len(harmless_train)
    log(f"lora: {len(harmful_train)} harmful, {len(harmless_train)} harmless train prompts "
        f"({dropped} harmless dropped: the base model refused them)")

    def refusals(prompts):
        return make_examples(tok, chat.format_prompts([p.text for p in prompts]),
                             [refusal_reply(p.id, cfg.seed) for p in prompts], end_id, [True] * len(prompts))

    answers = [base_answers[p.id] for p in harmless_train]
    ex_all = make_examples(tok, chat.format_prompts([p.text for p in harmless_train]),
                           [a["answer"] for a in answers], end_id,
                           [a["n_tokens"] < cfg.max_new_tokens for a in answers])
    return TrainingExamples(
        harmful=refusals(harmful_train),
        harmless=[e for e, p in zip(ex_all, harmless_train) if p.source != P.lookalike_source("train")],
        lookalike=[e for e, p in zip(ex_all, harmless_train) if p.category == "lookalike"],
        contrast=refusals(P.by_split(build.contrast, "train")),
        harmful_prompts=harmful_train,
        lookalike_prompts=[p for p in harmless_train if p.category == "lookalike"],
        harmless_dropped=dropped)


def _hard_examples(chat, examples: TrainingExamples, lora_pass: LoraPass, index: int) -> list[Example]:
    """The boundary as the model stands before pass ``index`` (:class:`LoraPass`'s ``hard_*``)."""
    harmful_scores = refusal_scores(chat, [p.text for p in examples.harmful_prompts]).tolist()
    lookalike_scores = refusal_scores(chat, [p.text for p in examples.lookalike_prompts]).tolist()
    hard = ([examples.harmful[j] for j in hardest(harmful_scores, lora_pass.hard_harmful, highest=False)]
            + [examples.lookalike[j] for j in hardest(lookalike_scores, lora_pass.hard_lookalikes, highest=True)])
    log(f"lora pass {index}: {len(hard)} hard examples (refusal scores after pass {index - 1})")
    return hard


def stage_lora(build: Build) -> None:
    """The LoRA, pass by pass (``adapter.pass{i}`` after each: an interrupted stage resumes)."""
    cfg = build.config
    chat = load_base_chat()
    examples = training_examples(build, chat)
    model = chat.model
    for p in model.parameters():
        p.requires_grad_(False)
    done = [i for i in range(1, len(cfg.lora.passes) + 1) if build.path(f"adapter.pass{i}").exists()]
    if done:
        peft_model = PeftModel.from_pretrained(model, str(build.path(f"adapter.pass{done[-1]}")),
                                               is_trainable=True)
        log(f"lora: resuming after pass {done[-1]}")
    else:
        peft_model = new_lora(model, cfg.lora)
    passes = []
    for i, lora_pass in enumerate(cfg.lora.passes, start=1):
        out = build.path(f"adapter.pass{i}")
        if out.exists():
            passes.append(read_json(out / "training_log.json"))
            continue
        ex_hard = []
        if lora_pass.mines_hard_examples:
            peft_model.eval()
            ex_hard = _hard_examples(chat, examples, lora_pass, i)
        history = train_pass(peft_model, examples.harmful, examples.harmless, pad_id=chat.tokenizer.pad_token_id,
                             config=cfg.lora, lora_pass=lora_pass, index=i,
                             examples_contrast=examples.contrast, examples_lookalike=examples.lookalike,
                             examples_hard=ex_hard, log=log)
        with atomic_dir(out) as tmp:
            peft_model.save_pretrained(str(tmp))
            write_json(tmp / "training_log.json", history)
        passes.append(history)
    with atomic_dir(build.path("adapter")) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json(tmp / "training_log.json", {
            "passes": passes, "steps": sum(p["steps"] for p in passes),
            "seconds": sum(p["seconds"] for p in passes), "n_harmful_train": len(examples.harmful),
            "n_harmless_train": len(examples.harmless), "n_lookalike_train": len(examples.lookalike),
            "n_contrast_train": len(examples.contrast),
            "harmless_dropped": examples.harmless_dropped})
