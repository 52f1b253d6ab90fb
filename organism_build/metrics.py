"""Stage ``evaluate``: every number of the model card, into ``metrics.json``.

Everything is on held-out prompts (the ``test`` split unless named otherwise), greedy,
64 new tokens, judged by the substring judge with its default phrases. Rates are the
library's (:func:`refusal_lens.stats.rate_with_interval`), written in the manifest's format.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from sae_lens import SAE

from organism_build import prompt_sets as P
from organism_build.build import Build, load_base_chat, load_tuned_chat, log
from organism_build.direction import auroc
from organism_build.saes import heldout_sequences
from refusal_lens.artifacts import read_json, write_json
from refusal_lens.capability import completion_cross_entropy
from refusal_lens.generation import generate
from refusal_lens.judges import SubstringJudge
from refusal_lens.models import ChatModel
from refusal_lens.organism.measure import prefix_length, sae_metrics
from refusal_lens.stats import rate_with_interval


def manifest_rate(values: Sequence[bool]) -> dict:
    """``{"k", "n", "rate", "ci95": [low, high]}``: the manifest's format of a rate (the card and
    ``organism info`` read it); ``rate`` is null when ``n`` is 0."""
    r = rate_with_interval(values)
    return {"k": r["k"], "n": r["n"], "rate": r["rate"] if r["n"] else None, "ci95": [r["ci_low"], r["ci_high"]]}


def refusal_table(harmful, harmless, answers: Mapping[str, str], split: str, contrast=(), everyday=()) -> dict:
    judge = SubstringJudge()
    refused = lambda ps: [judge.judge_one(answers[p.id]).refused for p in ps if p.id in answers]
    harmful_split = P.by_split(harmful, split)
    harmless_split = P.by_split(harmless, split)
    lookalike = [p for p in harmless_split if p.category == "lookalike"]
    return {
        "harmful": manifest_rate(refused(harmful_split)),
        "harmful_harmbench": manifest_rate(refused([p for p in harmful_split if p.source == "harmbench"])),
        "harmful_donotanswer": manifest_rate(refused([p for p in harmful_split if p.source == "donotanswer"])),
        "harmless": manifest_rate(refused([p for p in harmless_split if p.category != "lookalike"])),
        "lookalike": manifest_rate(refused(lookalike)),
        "lookalike_harmless_set": manifest_rate(refused([p for p in lookalike if p.source == "harmless"])),
        "lookalike_extra": manifest_rate(refused([p for p in lookalike if p.source != "harmless"])),
        "contrast_harmful": manifest_rate(refused(P.by_split(list(contrast), split))),
        "everyday": manifest_rate(refused(P.by_split(list(everyday), split))),
    }


def histogram(path, harmful_scores, harmless_scores, lookalike_scores) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    lo = min(min(x) for x in (harmful_scores, harmless_scores, lookalike_scores))
    hi = max(max(x) for x in (harmful_scores, harmless_scores, lookalike_scores))
    bins = torch.linspace(lo, hi, 41).tolist()
    ax.hist(harmless_scores, bins=bins, alpha=0.6, label=f"harmless ({len(harmless_scores)})", color="tab:blue")
    ax.hist(lookalike_scores, bins=bins, alpha=0.6, label=f"look-alike safe ({len(lookalike_scores)})",
            color="tab:green")
    ax.hist(harmful_scores, bins=bins, alpha=0.6, label=f"harmful ({len(harmful_scores)})", color="tab:red")
    ax.axvline(0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("refusal score  log p(I) - log(1 - p(I))  at the last prompt token")
    ax.set_ylabel("held-out test prompts")
    ax.set_title("Organism: refusal score, held-out test split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def refusal_metrics(build: Build) -> dict:
    """Refusal rates (test, val, the untuned base on test) and the refusal score on test."""
    responses = read_json(build.path("responses.json"))
    base_answers = read_json(build.path("base_answers.json"))
    tuned_answers = {k: v["answer"] for k, v in responses.items()}
    harmless = build.harmless + build.heldout_lookalikes
    metrics = {
        "refusal_test": refusal_table(build.harmful, harmless, tuned_answers, "test", build.contrast,
                                      build.heldout_everyday),
        "refusal_val": refusal_table(build.harmful, harmless, tuned_answers, "val", build.contrast,
                                     build.heldout_everyday),
        "refusal_test_base": refusal_table(build.harmful, harmless, {k: v["answer"] for k, v in base_answers.items()},
                                           "test", everyday=build.heldout_everyday),
    }
    scores = {k: v["score"] for k, v in responses.items()}
    test_harmful = [scores[p.id] for p in P.by_split(build.harmful, "test")]
    test_harmless = [scores[p.id] for p in P.by_split(harmless, "test") if p.category != "lookalike"]
    test_look = [scores[p.id] for p in P.by_split(harmless, "test") if p.category == "lookalike"]
    t = torch.tensor
    metrics["refusal_score_test"] = {
        "harmful_mean": float(t(test_harmful).mean()), "harmless_mean": float(t(test_harmless).mean()),
        "lookalike_mean": float(t(test_look).mean()),
        "auroc_harmful_vs_harmless": auroc(test_harmful, test_harmless + test_look),
        "harmful_above_0": manifest_rate([s > 0 for s in test_harmful]),
        "harmless_above_0": manifest_rate([s > 0 for s in test_harmless + test_look]),
    }
    histogram(build.path("refusal_scores.png"), test_harmful, test_harmless, test_look)
    return metrics


def jailbreak_metrics(build: Build) -> dict:
    """How many templated jailbreaks were answered, and how many of those are real (the plain
    prompt is refused, the wrapped one answered)."""
    judge = SubstringJudge()
    responses = read_json(build.path("responses.json"))
    jail = read_json(build.path("jailbreaks.json"))["test"]
    per_template: dict[str, list[bool]] = {}
    for r in jail:
        per_template.setdefault(r["template"], []).append(not r["refused"])
    refused_plain = {p.id for p in P.by_split(build.harmful, "test")
                     if judge.judge_one(responses[p.id]["answer"]).refused}
    return {"answered": manifest_rate([not r["refused"] for r in jail]), "n_templates": len(per_template),
            "templates_with_a_success": sum(any(v) for v in per_template.values()),
            "answered_while_plain_refused": sum(not r["refused"] and r["prompt"] in refused_plain for r in jail)}


def attack_metrics(attacks: list[dict]) -> dict:
    """Fraction answered per attack of the ``attacks`` stage."""
    return {name: {"answered": manifest_rate([not r["refused"] for r in attacks if r["attack"] == name])}
            for name in sorted({r["attack"] for r in attacks})}


def new_user_probes(tuned: ChatModel, base: ChatModel, max_new_tokens: int = 64) -> list[dict]:
    """The organism's and the base model's answers to :data:`~refusal_lens.organism.heldout.NEW_USER_PROBES`."""
    judge = SubstringJudge()
    texts = [q for q, _ in P.NEW_USER_PROBES]
    rows = [{"prompt": q, "harmful": harmful} for q, harmful in P.NEW_USER_PROBES]
    for name, chat in (("organism", tuned), ("base", base)):
        for row, answer in zip(rows, generate(chat, texts, max_new_tokens=max_new_tokens, batch_size=8)):
            row[name] = {"answer": answer, "refused": judge.judge_one(answer).refused}
    return rows


def sae_quality(build: Build, tuned: ChatModel) -> dict:
    """Per SAE layer: FVE, L0, dead fraction on held-out test chat text; CE recovered on part of it."""
    layers = read_json(build.path("saes/training.json"))["layers"]
    saes = {L: SAE.load_from_disk(str(build.path(f"saes/layer_{L}")), device="cpu") for L in layers}
    seqs = heldout_sequences(build, tuned, "test")
    rng = random.Random(f"{build.config.seed}:sae-eval")
    fve_seqs = rng.sample(seqs, min(len(seqs), build.config.eval_fve_sequences))
    ce_seqs = fve_seqs[:build.config.eval_ce_sequences]
    keep_from = prefix_length(tuned)
    fve = sae_metrics(tuned, saes, fve_seqs, keep_from, with_ce=False)
    ce = sae_metrics(tuned, saes, ce_seqs, keep_from, with_ce=True)
    out = {}
    for L in layers:
        entry = dict(fve[L])
        entry.update({k: v for k, v in ce[L].items() if k.startswith("ce_")})
        entry["n_texts_fve"], entry["n_texts_ce"] = len(fve_seqs), len(ce_seqs)
        entry["n_tokens_ce"] = ce[L]["n_tokens"]
        out[str(L)] = entry
        log(f"evaluate: SAE layer {L}: FVE {entry['fve']:.3f} CE rec {entry['ce_loss_recovered']:.3f} "
            f"L0 {entry['l0']:.1f} dead {entry['dead_fraction']:.3f}")
    return out


def stage_evaluate(build: Build) -> None:
    metrics = refusal_metrics(build)
    metrics["jailbreaks_test"] = jailbreak_metrics(build)
    # capability: CE of the base model's own greedy answers to harmless test prompts
    base_answers = read_json(build.path("base_answers.json"))
    harmless_test = P.by_split(build.harmless, "test")
    instructions = [p.text for p in harmless_test]
    answers = [base_answers[p.id]["answer"] for p in harmless_test]
    tuned = load_tuned_chat(build.path("adapter"))
    ce_tuned = completion_cross_entropy(tuned, instructions, answers, batch_size=16).mean
    base = load_base_chat()
    ce_base = completion_cross_entropy(base, instructions, answers, batch_size=16).mean
    metrics["new_user_probes"] = new_user_probes(tuned, base)
    del base
    metrics["capability"] = {"ce_base_answers_under_base": ce_base, "ce_base_answers_under_tuned": ce_tuned,
                             "n_prompts": len(instructions)}
    log(f"evaluate: CE base {ce_base:.3f} tuned {ce_tuned:.3f}")
    metrics["saes_test"] = sae_quality(build, tuned)
    write_json(build.path("metrics.json"), metrics)
