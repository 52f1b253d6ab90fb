"""Stage: jailbreak dissection [Y25] (METHOD.md §5): the drop of refusal and harm features from a
refused plain request to the adversarial prompt that jailbreaks it, per attack family, and the
prompt's tokens that push the refusal features down.

Pairs of an adversarial prompt and its plain harmful request (held-out harmful test prompts the
model refuses, or the plain request a source ships), judged by greedy generation: a pair counts
when the plain request is refused and the adversarial prompt answered. For each such pair, the
relative drop of the refusal features (CosSim+AP, last prompt position) and of the harm
features (the upstream stage's, largest over the instruction) from plain to adversarial: does
the jailbreak hide the harm, or only suppress the refusal? For the pairs with the largest
refusal drop, which tokens push the refusal features down (integrated gradients on the input
embeddings), shown coloured in the report. Aggregated per attack family, with intervals.
"""

from __future__ import annotations

import html
import json
import random
from pathlib import Path

from pydantic import BaseModel, Field
from rich.console import RenderableType

from refusal_lens.analyses.jailbreaks import (
    JailbreakPair,
    file_pairs,
    fitting_pairs,
    harm_activation,
    judge_pairs,
    refusal_activation,
    relative_drop,
    suffix_pairs,
    template_pairs,
    token_attribution,
    vanilla_pairs,
)
from refusal_lens.data import load_dataset, load_prompt_file, load_prompts
from refusal_lens.data.offline import load_gcg_suffixes, load_jailbreak_templates
from refusal_lens.data.prompts import Prompt
from refusal_lens.generation import generate
from refusal_lens.data.registry import REGISTRY, looks_like_file
from refusal_lens.interventions import FeatureKey
from refusal_lens.judges import Judge, get_judge
from refusal_lens.organism import assets_dir
from refusal_lens.pipeline.categories import refusal_set
from refusal_lens.pipeline.prompt_sets import PromptSets
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.pipeline.upstream import Upstream
from refusal_lens.report import ReportSection, img, save_figure, subplots, table
from refusal_lens.scoring import refusal_scores
from refusal_lens.stats import mean_with_interval, rate_with_interval

ORGANISM_JAILBREAKS = "jailbreaks.json"


# --- pairs --------------------------------------------------------------------------------
def organism_pairs() -> tuple[list[JailbreakPair], int]:
    """The organism's shipped jailbreaks that name their plain request (a prompt id of an offline
    set); and how many name none (tense rephrasings ship without their original)."""
    rows = json.loads((assets_dir() / ORGANISM_JAILBREAKS).read_text())
    named = [r for r in rows if r.get("prompt")]
    texts: dict[str, str] = {}
    for source in sorted({r["prompt"].split(":", 1)[0] for r in named}):
        texts.update({p.id: p.text for p in load_dataset(source)})
    pairs = [JailbreakPair(r["id"], r["attack"], r["text"], texts[r["prompt"]], r["prompt"])
             for r in named if r["prompt"] in texts]
    return pairs, len(rows) - len(pairs)


def organism_unpaired() -> list[Prompt]:
    """The organism's shipped jailbreaks that name no plain request (past- and future-tense
    rephrasings): no pair to dissect, but adversarial prompts for the out-of-distribution probes."""
    rows = json.loads((assets_dir() / ORGANISM_JAILBREAKS).read_text())
    return [Prompt(id=r["id"], text=r["text"], source="organism-jailbreaks", meta={"attack": r["attack"]})
            for r in rows if not r.get("prompt")]


def source_pairs(source: str, requests: list[Prompt], n: int, seed: int) -> tuple[list[JailbreakPair], str | None]:
    """The candidate pairs of one ``jailbreaks.sources`` entry, and a note on what was left out."""
    note = None
    if source == "templates":
        templates = [t for t in load_jailbreak_templates() if t.meta.get("slot")]
        return template_pairs(templates, requests, n, seed), None
    if source == "gcg":
        return suffix_pairs(load_gcg_suffixes(), requests, n, seed), None
    if source == "organism":
        pairs, unnamed = organism_pairs()
        note = f"organism: {unnamed} shipped jailbreaks name no plain request" if unnamed else None
    elif source.split("=", 1)[0] in REGISTRY:
        pairs = vanilla_pairs(load_prompts(source), source.split("=", 1)[0])
        if not pairs:
            raise ValueError(f"jailbreaks.sources: {source!r} keeps no plain request with its prompts (meta "
                             "'vanilla'); use templates, gcg, organism, wildjailbreak-adversarial-harmful-train or a "
                             "pair file with adversarial and plain columns.")
    elif looks_like_file(source):
        pairs = file_pairs(load_prompt_file(source, column="adversarial"), load_prompt_file(source, column="plain"),
                           Path(source).stem)
    else:
        raise ValueError(f"Unknown jailbreaks source {source!r}: use templates, gcg, organism, a registered set that "
                         "keeps plain requests (wildjailbreak-adversarial-harmful-train) or a pair file.")
    if len(pairs) > n:
        pairs = random.Random(seed).sample(pairs, n)
    return pairs, note


# --- the result ---------------------------------------------------------------------------
class PairResult(BaseModel):
    id: str = Field(description="the pair's id")
    family: str = Field(description="the attack family")
    adversarial: str = Field(description="the adversarial prompt")
    plain: str = Field(description="its plain harmful request")
    plain_id: str = Field(description="the plain request's prompt id")
    answer: str = Field(description="the greedy answer to the adversarial prompt")
    refusal_plain: float = Field(description="refusal features' summed activation at the last position, plain")
    refusal_adversarial: float = Field(description="... adversarial")
    refusal_drop: float | None = Field(description="(plain − adversarial) / plain; null when plain is 0")
    harm_plain: float | None = Field(description="harm features' summed activation, each at its largest over the "
                                                 "instruction, plain (null: no harm features)")
    harm_adversarial: float | None = Field(description="... adversarial")
    harm_drop: float | None = Field(description="(plain − adversarial) / plain; null when plain is 0")
    score_plain: float = Field(description="refusal score of the plain request")
    score_adversarial: float = Field(description="refusal score of the adversarial prompt")


class FamilyResult(BaseModel):
    n_candidates: int = Field(description="candidate pairs")
    n_plain_refused: int = Field(description="pairs whose plain request the model refuses")
    n_jailbroken: int = Field(description="... and whose adversarial prompt it answers")
    jailbreak_rate: float | None = Field(description="n_jailbroken / n_plain_refused (null: none refused)")
    jailbreak_ci: tuple[float, float] = Field(description="its 95% Wilson interval")
    refusal_drop: float | None = Field(description="mean relative drop of the refusal features over the jailbroken "
                                                   "pairs")
    refusal_drop_ci: tuple[float, float] | None = Field(description="its 95% bootstrap interval")
    harm_drop: float | None = Field(description="mean relative drop of the harm features")
    harm_drop_ci: tuple[float, float] | None = Field(description="its 95% bootstrap interval")
    harm_kept_share: float | None = Field(description="share of the jailbroken pairs whose harm features drop less "
                                                      "than their refusal features (the harm is seen, the refusal "
                                                      "suppressed)")


class TokenView(BaseModel):
    pair_id: str = Field(description="the pair")
    tokens: list[str] = Field(description="the adversarial instruction's tokens")
    scores: list[float] = Field(description="each token's integrated-gradient share of the refusal features' summed "
                                            "pre-activation at the last position (negative: pushes them down)")
    in_request: list[bool] | None = Field(description="tokens of the plain request (null: unknown)")
    total: float = Field(description="the summed pre-activation on the prompt")
    baseline: float = Field(description="... with every instruction token replaced by the pad token")


class UnpairedJailbreak(BaseModel):
    id: str = Field(description="the prompt's id")
    family: str = Field(description="the attack family")
    adversarial: str = Field(description="the adversarial prompt")
    answer: str = Field(description="its greedy answer, judged not a refusal")


class UnpairedFamily(BaseModel):
    n_candidates: int = Field(description="adversarial prompts judged")
    n_jailbroken: int = Field(description="... that the model answers")
    jailbreak_rate: float = Field(description="n_jailbroken / n_candidates")
    jailbreak_ci: tuple[float, float] = Field(description="its 95% Wilson interval")


class Jailbreaks(BaseModel):
    sources: list[str] = Field(description="`jailbreaks.sources`")
    judge: str = Field(description="`evaluation.judge`")
    notes: list[str] = Field(description="what a source could not provide")
    refusal_features: list[FeatureKey] = Field(description="the attribution stage's CosSim+AP set")
    harm_features: list[FeatureKey] = Field(description="the upstream stage's harm features")
    families: dict[str, FamilyResult] = Field(description="attack family → aggregate")
    pairs: list[PairResult] = Field(description="the jailbroken pairs")
    tokens: list[TokenView] = Field(description="the `jailbreaks.n_shown` pairs with the largest refusal drop, token "
                                                "by token")
    unpaired_families: dict[str, UnpairedFamily] = Field(default_factory=dict, description=(
        "attack family → how many adversarial prompts without a plain request (the organism's tense "
        "rephrasings, `jailbreaks.n_unpaired` of them) the model answers"))
    unpaired: list[UnpairedJailbreak] = Field(default_factory=list, description=(
        "those it answers: adversarial prompts for the out-of-distribution probes, not dissected (no plain request)"))


# --- compute ------------------------------------------------------------------------------
def _requests(sets: PromptSets, n: int) -> list[Prompt]:
    refused = [p.as_prompt("eval") for p in sets.harmful_eval if p.score > 0][:n]
    if not refused:
        raise ValueError("The model refuses none of the held-out harmful prompts: no plain request to pair.")
    return refused


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Jailbreaks:
    config, evaluation = ctx.config.jailbreaks, ctx.config.evaluation
    refusal = refusal_set(inputs)
    upstream: Upstream = inputs["upstream"]
    harm = [(f.layer, f.feature) for f in upstream.harm_features]
    requests = _requests(inputs["prompt_sets"], config.n_requests)
    candidates, notes = [], []
    for source in config.sources:
        pairs, note = source_pairs(source, requests, config.n_pairs, ctx.config.seed)
        pairs, too_long = fitting_pairs(ctx.chat_model, pairs, evaluation.max_new_tokens)
        candidates += pairs
        notes += [note] if note else []
        notes += [f"{source}: {too_long} pairs longer than the model's context left out"] if too_long else []
    if not candidates:
        raise ValueError(f"jailbreaks.sources {config.sources} gave no pairs.")
    ctx.console.print(f"  judging {len(candidates)} candidate pairs")
    judge = get_judge(evaluation.judge)  # a classifier judge is a model: load it once for both uses
    verdicts = judge_pairs(ctx.chat_model, candidates, judge,
                           max_new_tokens=evaluation.max_new_tokens, batch_size=evaluation.batch_size)
    jailbroken = [j for j, hit in enumerate(verdicts.jailbreaks()) if hit]
    pairs = _measure(ctx, [candidates[j] for j in jailbroken], [verdicts.adversarial_answers[j] for j in jailbroken],
                     refusal, harm)
    families = _families(candidates, verdicts, pairs, ctx.config.seed)
    shown = sorted((p for p in pairs if p.refusal_drop is not None), key=lambda p: -p.refusal_drop)[:config.n_shown]
    tokens = [TokenView(pair_id=p.id, **token_attribution(ctx.chat_model, ctx.saes, p.adversarial, refusal,
                                                          plain=p.plain, steps=config.steps).__dict__)
              for p in shown]
    unpaired_families, unpaired = _judge_unpaired(ctx, judge) if "organism" in config.sources else ({}, [])
    return Jailbreaks(sources=config.sources, judge=evaluation.judge, notes=notes, refusal_features=refusal,
                      harm_features=harm, families=families, pairs=pairs, tokens=tokens,
                      unpaired_families=unpaired_families, unpaired=unpaired)


def _judge_unpaired(ctx: RunContext, judge: Judge) -> tuple[dict[str, UnpairedFamily], list[UnpairedJailbreak]]:
    """Greedy answers to up to `jailbreaks.n_unpaired` of the organism's unpaired jailbreaks, judged."""
    config, evaluation = ctx.config.jailbreaks, ctx.config.evaluation
    prompts = organism_unpaired()
    if len(prompts) > config.n_unpaired:
        prompts = random.Random(ctx.config.seed).sample(prompts, config.n_unpaired)
    if not prompts:
        return {}, []
    ctx.console.print(f"  judging {len(prompts)} unpaired adversarial prompts")
    texts = [p.text for p in prompts]
    answers = generate(ctx.chat_model, texts, max_new_tokens=evaluation.max_new_tokens,
                       batch_size=evaluation.batch_size, progress="unpaired adversarial prompts")
    answered = [not v.refused for v in judge.judge(texts, answers)]
    families = {}
    for family in dict.fromkeys(p.meta["attack"] for p in prompts):
        hits = rate_with_interval([a for p, a in zip(prompts, answered) if p.meta["attack"] == family])
        families[family] = UnpairedFamily(n_candidates=hits["n"], n_jailbroken=hits["k"], jailbreak_rate=hits["rate"],
                                          jailbreak_ci=(hits["ci_low"], hits["ci_high"]))
    jailbroken = [UnpairedJailbreak(id=p.id, family=p.meta["attack"], adversarial=p.text, answer=answer)
                  for p, answer, hit in zip(prompts, answers, answered) if hit]
    return families, jailbroken


def _measure(ctx: RunContext, pairs: list[JailbreakPair], answers: list[str], refusal, harm) -> list[PairResult]:
    if not pairs:
        return []
    model, saes, batch = ctx.chat_model, ctx.saes, ctx.config.batch_size
    plain, adversarial = [p.plain for p in pairs], [p.adversarial for p in pairs]
    refusal_plain = refusal_activation(model, saes, plain, refusal, batch)
    refusal_adversarial = refusal_activation(model, saes, adversarial, refusal, batch)
    harm_plain = harm_adversarial = None
    if harm:
        harm_plain = harm_activation(model, saes, plain, harm, batch)
        harm_adversarial = harm_activation(model, saes, adversarial, harm, batch)
    scores_plain = refusal_scores(model, plain, batch_size=batch)
    scores_adversarial = refusal_scores(model, adversarial, batch_size=batch)
    refusal_drops = relative_drop(refusal_plain, refusal_adversarial)
    harm_drops = relative_drop(harm_plain, harm_adversarial) if harm else [None] * len(pairs)
    return [PairResult(id=p.id, family=p.family, adversarial=p.adversarial, plain=p.plain, plain_id=p.plain_id,
                       answer=answers[j], refusal_plain=float(refusal_plain[j]),
                       refusal_adversarial=float(refusal_adversarial[j]), refusal_drop=refusal_drops[j],
                       harm_plain=None if harm_plain is None else float(harm_plain[j]),
                       harm_adversarial=None if harm_adversarial is None else float(harm_adversarial[j]),
                       harm_drop=harm_drops[j], score_plain=float(scores_plain[j]),
                       score_adversarial=float(scores_adversarial[j]))
            for j, p in enumerate(pairs)]


def _families(candidates: list[JailbreakPair], verdicts, pairs: list[PairResult], seed: int) -> dict[str, FamilyResult]:
    families = {}
    for family in dict.fromkeys(p.family for p in candidates):
        members = [j for j, p in enumerate(candidates) if p.family == family]
        refused = [j for j in members if verdicts.plain_refused[j]]
        hits = rate_with_interval([not verdicts.adversarial_refused[j] for j in refused])
        mine = [p for p in pairs if p.family == family]
        refusal = mean_with_interval([p.refusal_drop for p in mine], seed=seed)
        harm = mean_with_interval([p.harm_drop for p in mine], seed=seed)
        both = [p for p in mine if p.refusal_drop is not None and p.harm_drop is not None]
        families[family] = FamilyResult(
            n_candidates=len(members), n_plain_refused=len(refused), n_jailbroken=hits["k"],
            jailbreak_rate=hits["rate"] if refused else None, jailbreak_ci=(hits["ci_low"], hits["ci_high"]),
            refusal_drop=refusal["mean"] if refusal["n"] else None,
            refusal_drop_ci=(refusal["ci_low"], refusal["ci_high"]) if refusal["n"] else None,
            harm_drop=harm["mean"] if harm["n"] else None,
            harm_drop_ci=(harm["ci_low"], harm["ci_high"]) if harm["n"] else None,
            harm_kept_share=sum(p.harm_drop < p.refusal_drop for p in both) / len(both) if both else None)
    return families


# --- what it shows ------------------------------------------------------------------------
def summary(result: Jailbreaks) -> list[RenderableType]:
    parts = [f"{name} {f.n_jailbroken}/{f.n_plain_refused}" for name, f in result.families.items()]
    lines = [f"Jailbreak pairs (jailbroken / plain refused): {', '.join(parts)}"]
    if result.unpaired_families:
        unpaired = [f"{name} {f.n_jailbroken}/{f.n_candidates}" for name, f in result.unpaired_families.items()]
        lines.append(f"Unpaired adversarial prompts answered (for the probes): {', '.join(unpaired)}")
    return lines


def _interval(value: float | None, ci: tuple[float, float] | None) -> str:
    return "–" if value is None else f"{value:+.0%} [{ci[0]:+.0%}, {ci[1]:+.0%}]"


def _rows(result: Jailbreaks) -> list[list[str]]:
    return [[name, f.n_candidates, f.n_plain_refused, f.n_jailbroken,
             "–" if f.jailbreak_rate is None else f"{f.jailbreak_rate:.0%} [{f.jailbreak_ci[0]:.0%}, "
                                                  f"{f.jailbreak_ci[1]:.0%}]",
             _interval(f.refusal_drop, f.refusal_drop_ci), _interval(f.harm_drop, f.harm_drop_ci),
             "–" if f.harm_kept_share is None else f"{f.harm_kept_share:.0%}"]
            for name, f in result.families.items()]


def fig_drops(result: Jailbreaks, folder: Path) -> str | None:
    points = [p for p in result.pairs if p.refusal_drop is not None and p.harm_drop is not None]
    if not points:
        return None
    fig, ax = subplots(figsize=(5.5, 4.5))
    for family in dict.fromkeys(p.family for p in points):
        mine = [p for p in points if p.family == family]
        ax.scatter([p.harm_drop for p in mine], [p.refusal_drop for p in mine], label=family, alpha=0.7)
    ax.plot([-1, 1], [-1, 1], color="gray", lw=1, ls="--")
    ax.axhline(0, color="black", lw=0.5)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("relative drop of the harm features")
    ax.set_ylabel("relative drop of the refusal features")
    ax.legend(fontsize=7)
    ax.set_title("Jailbroken pairs: above the diagonal,\nthe refusal drops more than the harm", fontsize=10)
    return save_figure(fig, folder, "jailbreak_drops")


def fig_families(result: Jailbreaks, folder: Path) -> str | None:
    names = [n for n, f in result.families.items() if f.jailbreak_rate is not None]
    if not names:
        return None
    families = [result.families[n] for n in names]
    fig, ax = subplots(figsize=(max(5, 1.2 * len(names) + 1), 3.2))
    ax.bar(range(len(names)), [f.jailbreak_rate for f in families],
           yerr=[[f.jailbreak_rate - f.jailbreak_ci[0] for f in families],
                 [f.jailbreak_ci[1] - f.jailbreak_rate for f in families]], capsize=3, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(names)), [f"{n}\n({f.n_jailbroken}/{f.n_plain_refused})" for n, f in zip(names, families)],
                  fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("jailbroken / plain refused")
    ax.set_title("Jailbreak rate per attack family (95% Wilson CI)")
    return save_figure(fig, folder, "jailbreak_families")


def coloured_tokens(view: TokenView) -> str:
    """The prompt's tokens on a background coloured by score (red: pushes the refusal features down,
    blue: up); the plain request's tokens underlined."""
    scale = max((abs(s) for s in view.scores), default=0.0) or 1.0
    spans = []
    for j, (token, score) in enumerate(zip(view.tokens, view.scores)):
        alpha = min(1.0, abs(score) / scale)
        colour = f"rgba(214,39,40,{alpha:.2f})" if score < 0 else f"rgba(31,119,180,{alpha:.2f})"
        underline = ";text-decoration:underline" if view.in_request and view.in_request[j] else ""
        spans.append(f'<span title="{score:+.4f}" style="background:{colour}{underline}">{html.escape(token)}</span>')
    return f'<div style="white-space:pre-wrap;font-family:monospace;font-size:12px">{"".join(spans)}</div>'


def report(result: Jailbreaks, inputs: Inputs, figures: Path) -> list[ReportSection]:
    text = (f"<p>Pairs of an adversarial prompt and its plain harmful request, judged by greedy answers "
            f"({html.escape(result.judge)}); jailbroken: the plain request refused, the adversarial prompt answered. "
            f"Relative drop from plain to adversarial of the {len(result.refusal_features)} refusal features (last "
            f"position) and the {len(result.harm_features)} harm features (largest over the instruction); mean over "
            f"the jailbroken pairs with a 95% bootstrap interval.</p>")
    if result.notes:
        text += f"<p>{html.escape('; '.join(result.notes))}.</p>"
    body = text + table(_rows(result), ["family", "pairs", "plain refused", "jailbroken", "jailbreak rate",
                                        "refusal-feature drop", "harm-feature drop", "harm drops less"])
    if result.unpaired_families:
        body += ("<p>Adversarial prompts that name no plain request (the organism's tense rephrasings): not dissected, "
                 "but those answered join the probes' out-of-distribution adversarial prompts.</p>")
        body += table([[name, f.n_candidates, f.n_jailbroken,
                        f"{f.jailbreak_rate:.0%} [{f.jailbreak_ci[0]:.0%}, {f.jailbreak_ci[1]:.0%}]"]
                       for name, f in result.unpaired_families.items()],
                      ["family", "prompts", "answered", "rate (95% Wilson CI)"])
    body += img(fig_families(result, figures), "jailbreak rates") + img(fig_drops(result, figures), "drop scatter")
    pairs = {p.id: p for p in result.pairs}
    for view in result.tokens:
        pair = pairs[view.pair_id]
        body += (f"<h3>{html.escape(pair.family)}: refusal features {pair.refusal_drop:+.0%}</h3>"
                 f"<p>Red tokens push the refusal features down, blue ones up (integrated gradients of their summed "
                 f"pre-activation, {view.total:.2f} on the prompt vs {view.baseline:.2f} with the instruction "
                 f"padded out); the plain request is underlined.</p>" + coloured_tokens(view))
    return [ReportSection("Jailbreak dissection", body)]


STAGE = Stage(
    name="jailbreaks",
    result=Jailbreaks,
    compute=compute,
    reads=("prompt_sets", "attribution", "upstream"),
    config_sections=("jailbreaks", "evaluation", "seed", "batch_size"),
    summary=summary,
    report=report,
)
