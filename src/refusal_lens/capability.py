"""Capability cost of an intervention (METHOD.md §1).

1. Cross-entropy of the model's *own* greedy completions of harmless prompts: the completions
   are generated once, by the unmodified model, and every method is scored on exactly these
   token sequences (identical prompts and targets for every method). Only completion tokens
   count: the loss is the sum of ``-log p`` over completion tokens divided by the number of
   completion tokens (never by the prompt or padding tokens). The completion text is
   re-tokenized after the chat-formatted prompt; the end-of-turn token is not scored. The
   completion is read the way ``generate`` makes it: a pass over the prompt, then one over the
   completion continuing its key-value cache, so an edit scoped to prompt, post-instruction or
   generated positions (``interventions/positions.py``) edits there and nowhere else.
2. The next-token distribution at the last prompt position of the same harmless prompts
   (heretic's damage metric): ``KL(unmodified || under the method)`` per prompt, and whether
   the most likely next token is unchanged, read from the prompt pass of 1. Both runs use the
   same batches (same padding), so no intervention gives exactly 0.
3. Multiple-choice accuracy on an ARC-style file: each question is one user turn listing
   the lettered choices and asking for the letter; the prediction is the choice whose label
   token has the highest next-token logit at the last prompt position (one forward pass).
   Accuracy comes with a Wilson interval, and methods are compared with the baseline on the
   same questions (exact McNemar).

``capability_report`` runs them for a baseline and any number of named interventions.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from refusal_lens.activations import model_inputs
from refusal_lens.data.errors import DataError
from refusal_lens.generation import generate
from refusal_lens.interventions import intervene
from refusal_lens.models import position_ids_for
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.scoring import last_position_logits, next_token_kl
from refusal_lens.stats import mcnemar, mean_with_interval, rate_with_interval

# --- cross-entropy of own completions --------------------------------------------------------


@dataclass
class CrossEntropy:
    """Token-weighted mean cross-entropy over all completion tokens, and per prompt."""

    mean: float
    n_tokens: int
    per_prompt: list[float] = field(default_factory=list)   # NaN where a completion is empty

    def to_json(self) -> dict:
        return {"mean": self.mean, "n_tokens": self.n_tokens, "n_prompts": len(self.per_prompt),
                "per_prompt": [None if math.isnan(x) else x for x in self.per_prompt]}


DEFAULT_BATCH = 16  # sequences a forward pass on the CPU (on a GPU: the largest that fits)


def own_completions(chat_model: Any, instructions: Sequence[str], *, max_new_tokens: int = 64,
                    batch_size: int | None = None) -> list[str]:
    """Greedy completions of the unmodified model (the reference every method is scored on)."""
    return generate(chat_model, list(instructions), max_new_tokens=max_new_tokens, batch_size=batch_size)


def _prompt_ids(chat_model: Any, instructions: Sequence[str]) -> list[list[int]]:
    batch = chat_model.tokenize(list(instructions))
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())]


@torch.no_grad()
def _teacher_forced(chat_model: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                    interventions: Sequence[Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The last prompt position's logits (float32, on the model's device) and each completion token's loss.

    Two passes, as ``generate`` makes them: the left-padded prompts, then the right-padded
    completions continuing the prompts' key-value cache."""
    prompt = chat_model.pad(prompt_ids)
    width = max(len(ids) for ids in completion_ids)
    device = prompt["input_ids"].device
    tokens = torch.full((len(completion_ids), width), chat_model.tokenizer.pad_token_id, dtype=torch.long)
    present = torch.zeros((len(completion_ids), width), dtype=torch.bool)
    for row, ids in enumerate(completion_ids):
        tokens[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        present[row, :len(ids)] = True
    tokens, present = tokens.to(device), present.to(device)
    with intervene(chat_model, *interventions):
        first = chat_model.model(**model_inputs(prompt), use_cache=width > 0, logits_to_keep=1)
        last_prompt = first.logits[:, -1].float()
        if width == 0:
            return last_prompt, [torch.empty(0) for _ in completion_ids]
        mask = torch.cat([prompt["attention_mask"], present.long()], dim=1)
        rest = chat_model.model(input_ids=tokens, attention_mask=mask, position_ids=position_ids_for(mask)[:, -width:],
                                use_cache=True, **_continuing(chat_model.model, first))
    # an answer's first token is predicted at the last prompt position, token j > 0 at token j - 1
    first = F.cross_entropy(last_prompt[present[:, 0]], tokens[:, 0][present[:, 0]], reduction="none").cpu()
    later = F.cross_entropy(rest.logits[:, :-1][present[:, 1:]].float(), tokens[:, 1:][present[:, 1:]],
                            reduction="none").cpu()
    out, i, start = [], 0, 0
    for ids in completion_ids:
        if not ids:
            out.append(torch.empty(0))
            continue
        out.append(torch.cat([first[i:i + 1], later[start:start + len(ids) - 1]]))
        i, start = i + 1, start + len(ids) - 1
    return last_prompt, out


def _continuing(model: Any, output: Any) -> dict:
    """The key-value cache of ``output`` as the keyword ``model`` continues it by (transformers
    ≥ 5.2 names it ``cache``, earlier versions ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = output.past_key_values
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def completion_cross_entropy(chat_model: Any, instructions: Sequence[str], completions: Sequence[str], *,
                             interventions: Sequence[Any] = (), batch_size: int | None = None) -> CrossEntropy:
    """Cross-entropy of ``completions`` (after the chat-formatted ``instructions``) under ``interventions``.

    ``batch_size`` None: the largest batch that fits the GPU, ``DEFAULT_BATCH`` on the CPU; in a
    data-parallel run the pairs are split over the processes."""
    completion_ids = _completion_ids(chat_model, instructions, completions, batch_size)

    def losses(chunk: list[tuple[str, list[int]]]) -> list[torch.Tensor]:
        return _teacher_forced(chat_model, _prompt_ids(chat_model, [i for i, _ in chunk]),
                               [c for _, c in chunk], interventions)[1]

    return _cross_entropy(_over_pairs(chat_model, instructions, completion_ids, losses, batch_size))


def _completion_ids(chat_model: Any, instructions: Sequence[str], completions: Sequence[str],
                    batch_size: int | None) -> list[list[int]]:
    if len(instructions) != len(completions):
        raise ValueError(f"one completion per instruction: got {len(instructions)} instructions and "
                         f"{len(completions)} completions")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    completion_ids = [chat_model.tokenizer.encode(c, add_special_tokens=False) for c in completions]
    if not any(completion_ids):
        raise ValueError("every completion is empty: there is nothing to score (generate more tokens, "
                         "or use other prompts)")
    return completion_ids


def _over_pairs(chat_model: Any, instructions: Sequence[str], completion_ids: list[list[int]], run: Any,
                batch_size: int | None) -> list:
    """``run`` on batches of (instruction, completion ids) pairs, sized like the cross-entropy's."""
    return run_batched(chat_model, "cross_entropy", list(zip(instructions, completion_ids)), run,
                       batch_size=batch_size, default=DEFAULT_BATCH,
                       tokens=lambda part: longest_prompt(chat_model, [i for i, _ in part],
                                                          max((len(c) for _, c in part), default=0)))


def _cross_entropy(per_token: Sequence[torch.Tensor]) -> CrossEntropy:
    total = sum(float(t.sum()) for t in per_token)
    n_tokens = sum(int(t.numel()) for t in per_token)
    return CrossEntropy(mean=total / n_tokens, n_tokens=n_tokens,
                        per_prompt=[float(t.mean()) if t.numel() else float("nan") for t in per_token])


# --- the next-token distribution at the last prompt position --------------------------------


@dataclass
class NextTokenShift:
    """Per prompt: ``KL(base || edited)`` of the next-token distribution at the last prompt
    position, and whether the most likely next token is the same."""

    kl: list[float]
    top1_unchanged: list[bool]

    def to_json(self) -> dict:
        kl = torch.tensor(self.kl, dtype=torch.float64)
        mean = mean_with_interval(self.kl)
        return {"kl_mean": mean["mean"], "kl_ci": [mean["ci_low"], mean["ci_high"]],
                "kl_median": float(kl.median()), "kl_max": float(kl.max()),
                "top1_unchanged": sum(self.top1_unchanged) / len(self.top1_unchanged),
                "n_prompts": len(self.kl), "per_prompt_kl": list(self.kl)}


class BaseLogits:
    """The unmodified model's last-position logits (float32, on the CPU), kept per batch of
    prompts. Every method's next-token shift is measured on the batches its base was computed
    on (same padding, so no intervention gives exactly 0); a batch not seen before (the first
    method's, or one halved after an out-of-memory error) is computed when first asked for."""

    def __init__(self, chat_model: Any):
        self.chat_model = chat_model
        self._by_batch: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, instructions: Sequence[str]) -> torch.Tensor:
        key = tuple(instructions)
        if key not in self._by_batch:
            self._by_batch[key] = last_position_logits(self.chat_model, list(key)).float().cpu()
        return self._by_batch[key]

    def keep(self, instructions: Sequence[str], logits: torch.Tensor) -> None:
        """The unmodified model's logits of this batch, read by a pass made anyway."""
        self._by_batch[tuple(instructions)] = logits.float().cpu()


def next_token_shift(chat_model: Any, instructions: Sequence[str], base: BaseLogits | None = None, *,
                     interventions: Sequence[Any] = (), batch_size: int | None = None) -> NextTokenShift:
    """How ``interventions`` move the next-token distribution of ``instructions`` away from the
    unmodified model's (``base``: kept between methods; default, a new one).

    ``batch_size`` None: the largest batch that fits the GPU, ``DEFAULT_BATCH`` on the CPU; in a
    data-parallel run the prompts are split over the processes."""
    if not instructions:
        raise ValueError("no prompts to measure the next-token distribution on")
    base = BaseLogits(chat_model) if base is None else base

    def shift(chunk: list[str]) -> list[tuple[float, bool]]:
        reference = base(chunk)
        return _shift_rows(reference, last_position_logits(chat_model, chunk, interventions).float().cpu())

    rows = run_batched(chat_model, "next_token_kl", list(instructions), shift, batch_size=batch_size,
                       default=DEFAULT_BATCH, tokens=lambda part: longest_prompt(chat_model, part))
    return NextTokenShift([float(kl) for kl, _ in rows], [bool(same) for _, same in rows])


def _shift_rows(reference: torch.Tensor, edited: torch.Tensor) -> list[tuple[float, bool]]:
    """Per row: KL(reference || edited) of the next-token distributions, and whether the top-1 token is the same."""
    kl = next_token_kl(reference, edited).clamp(min=0).tolist()
    same = (reference.argmax(-1) == edited.argmax(-1)).tolist()
    return list(zip(kl, same))


def completion_cost(chat_model: Any, instructions: Sequence[str], completions: Sequence[str], base: BaseLogits, *,
                    interventions: Sequence[Any] = (), batch_size: int | None = None
                    ) -> tuple[CrossEntropy, NextTokenShift]:
    """``completion_cross_entropy`` and ``next_token_shift`` from the same passes over the model
    (the shift read at the prompt pass the cross-entropy makes anyway). Without
    ``interventions`` the pass is the unmodified model's: ``base`` keeps its logits."""
    completion_ids = _completion_ids(chat_model, instructions, completions, batch_size)

    def cost(chunk: list[tuple[str, list[int]]]) -> list[tuple[list[float], float, bool]]:  # JSON: gathered
        chunk_instructions = [i for i, _ in chunk]
        edited, losses = _teacher_forced(chat_model, _prompt_ids(chat_model, chunk_instructions),
                                         [c for _, c in chunk], interventions)
        edited = edited.cpu()
        if not interventions:
            base.keep(chunk_instructions, edited)
        shift = _shift_rows(base(chunk_instructions), edited)
        return [(row.tolist(), kl, same) for row, (kl, same) in zip(losses, shift)]

    rows = _over_pairs(chat_model, instructions, completion_ids, cost, batch_size)
    return (_cross_entropy([torch.tensor(losses) for losses, _, _ in rows]),
            NextTokenShift([float(kl) for _, kl, _ in rows], [bool(same) for _, _, same in rows]))


# --- multiple choice -----------------------------------------------------------------------


@dataclass(frozen=True)
class MCQuestion:
    id: str
    question: str
    choices: tuple[str, ...]
    labels: tuple[str, ...]
    answer: int                      # index into choices

    def instruction(self) -> str:
        lines = [self.question.strip(), ""]
        lines += [f"{label}. {text}" for label, text in zip(self.labels, self.choices)]
        lines += ["", "Answer with the letter of the correct choice only."]
        return "\n".join(lines)


def _mc_row(row: Any, index: int, name: str) -> MCQuestion:
    where = f"{name} row {index + 1}"
    if not isinstance(row, dict):
        raise DataError(f"{where} is a {type(row).__name__}; expected an object with question, choices and answer.")
    question = row.get("question")
    choices = row.get("choices")
    if isinstance(question, dict):                      # original ARC: {"stem", "choices": [{"text", "label"}]}
        choices = question.get("choices", choices)
        question = question.get("stem")
    if isinstance(choices, dict):                       # HF ai2_arc: {"text": [...], "label": [...]}
        texts, labels = list(choices.get("text") or []), list(choices.get("label") or [])
    elif isinstance(choices, list) and choices and isinstance(choices[0], dict):
        texts = [c.get("text") for c in choices]
        labels = [c.get("label") for c in choices]
    elif isinstance(choices, list):
        texts, labels = list(choices), [chr(ord("A") + i) for i in range(len(choices))]
    else:
        raise DataError(f"{where} has no choices list (columns: {', '.join(map(repr, row))}).")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where} has no question text.")
    if len(texts) < 2 or len(texts) != len(labels) or not all(isinstance(t, str) for t in texts):
        raise DataError(f"{where} needs at least two text choices, each with a label.")
    labels = [str(label) for label in labels]
    answer = row.get("answerKey", row.get("answer", row.get("label")))
    if isinstance(answer, bool) or answer is None:
        raise DataError(f"{where} has no answer (answerKey / answer).")
    if isinstance(answer, int):
        index_ = answer
    elif str(answer).strip() in labels:
        index_ = labels.index(str(answer).strip())
    else:
        raise DataError(f"{where}: answer {answer!r} is not one of the labels {', '.join(labels)}.")
    if not 0 <= index_ < len(texts):
        raise DataError(f"{where}: answer index {index_} is out of range for {len(texts)} choices.")
    qid = str(row.get("id") or f"{name}:{index}")
    return MCQuestion(qid, question, tuple(texts), tuple(labels), index_)


def load_mc_file(path: str | Path) -> list[MCQuestion]:
    """ARC-style questions from .jsonl / .json / .parquet.

    Rows may be in the Hugging Face ``ai2_arc`` layout (``question``, ``choices: {text,
    label}``, ``answerKey``), the original ARC layout (``question: {stem, choices: [{text,
    label}]}``, ``answerKey``), or simple (``question``, ``choices: [str]``, ``answer``: index
    or label).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Multiple-choice file not found: {path}.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path.name} line {lineno} is not valid JSON ({error.msg}).") from None
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path.name} is not valid JSON: {error.msg} at line {error.lineno}.") from None
        if not isinstance(rows, list):
            raise DataError(f"{path.name} must hold a JSON list of questions.")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(f"Unsupported multiple-choice file {path.name}; use .jsonl, .json or .parquet.")
    if not rows:
        raise DataError(f"{path.name} holds no questions.")
    return [_mc_row(row, i, path.stem) for i, row in enumerate(rows)]


def _label_token_ids(tokenizer: Any, label: str) -> list[int]:
    ids = set()
    for variant in (label, " " + label):
        for token in tokenizer.encode(variant, add_special_tokens=False):
            if tokenizer.decode([token]).strip() == label:
                ids.add(token)
    if not ids:
        raise ValueError(f"the choice label {label!r} is not a single token for this tokenizer")
    return sorted(ids)


def multiple_choice_accuracy(chat_model: Any, questions: Sequence[MCQuestion], *,
                             interventions: Sequence[Any] = (), batch_size: int | None = None) -> dict:
    """``{"rate", "ci_low", "ci_high", "n", "k", "correct": [...], "predicted": [...]}``."""
    if not questions:
        raise ValueError("no multiple-choice questions to score")
    cache: dict[str, list[int]] = {}

    def predict(chunk: list[MCQuestion]) -> list[int]:
        logits = last_position_logits(chat_model, [q.instruction() for q in chunk], interventions).float().cpu()
        predicted = []
        for row, q in enumerate(chunk):
            scores = []
            for label in q.labels:
                ids = cache.setdefault(label, _label_token_ids(chat_model.tokenizer, label))
                scores.append(float(logits[row, ids].max()))
            predicted.append(max(range(len(scores)), key=scores.__getitem__))
        return predicted

    predicted = run_batched(chat_model, "multiple_choice", list(questions), predict, batch_size=batch_size,
                            default=DEFAULT_BATCH,
                            tokens=lambda part: longest_prompt(chat_model, [q.instruction() for q in part]))
    correct = [p == q.answer for p, q in zip(predicted, questions)]
    return {**rate_with_interval(correct), "correct": correct, "predicted": predicted}


# --- report --------------------------------------------------------------------------------


def capability_report(chat_model: Any, instructions: Sequence[str],
                      methods: Mapping[str, Sequence[Any]], *, completions: Sequence[str] | None = None,
                      mc_questions: Sequence[MCQuestion] | None = None, max_new_tokens: int = 64,
                      batch_size: int | None = None) -> dict:
    """Capability cost of each named intervention against the unmodified model.

    ``instructions``: harmless prompts (the same for every method). ``completions``: the
    reference completions (default: the unmodified model's greedy ones). Returns
    ``{"completions": [...], "baseline": {...}, "methods": {name: {...}}}`` with cross-entropy,
    its increase over the baseline, the next-token shift (``next_token``: KL mean with a
    bootstrap interval, median, max, share of prompts whose top-1 token is unchanged), and
    (with ``mc_questions``) accuracy and a McNemar test against the baseline's per-question
    correctness.
    """
    if "baseline" in methods:
        raise ValueError("'baseline' is reserved for the unmodified model; name the method differently")
    if not instructions and not mc_questions:
        raise ValueError("nothing to measure: give harmless instructions and/or multiple-choice questions")
    if completions is None:
        completions = own_completions(chat_model, instructions, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size) if instructions else []

    base_logits = BaseLogits(chat_model)  # kept by the baseline's passes, read by every method's

    def one(interventions: Sequence[Any]) -> tuple[dict, NextTokenShift | None]:
        result: dict = {}
        shift = None
        if instructions:
            cross_entropy, shift = completion_cost(chat_model, instructions, completions, base_logits,
                                                   interventions=interventions, batch_size=batch_size)
            result["cross_entropy"] = cross_entropy.to_json()
        if mc_questions:
            result["multiple_choice"] = multiple_choice_accuracy(
                chat_model, mc_questions, interventions=interventions, batch_size=batch_size)
        return result, shift

    baseline, _ = one(())
    report = {"completions": list(completions), "baseline": baseline, "methods": {}}
    for name, interventions in methods.items():
        result, shift = one(interventions)
        if instructions:
            result["delta_cross_entropy"] = result["cross_entropy"]["mean"] - baseline["cross_entropy"]["mean"]
            result["next_token"] = shift.to_json()
        if mc_questions:
            result["multiple_choice_vs_baseline"] = mcnemar(baseline["multiple_choice"]["correct"],
                                                            result["multiple_choice"]["correct"])
        report["methods"][name] = result
    return report
