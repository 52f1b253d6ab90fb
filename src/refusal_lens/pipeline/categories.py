"""Stage: harm categories [Y25] (METHOD.md §5): each category's F*, the common and specific
features, clamping each with the other pinned to its clean value, and the transfer matrix.

Each category's global feature set F* is the CosSim+AP top k on that category's training
prompts; common = the intersection over categories, specific = F* minus common. On each
category's held-out prompts: clamp its specific features while the common ones are pinned to
their clean value, the reverse, and all of F*; each ASR is also reported over the "all" ASR
(normalised, as the paper does). The transfer matrix applies category A's specific set (common
pinned) to category B's prompts. Intervals: Wilson for rates, paired bootstrap for normalised
ASRs, prompts resampled within each category for the overlaps.
"""

from __future__ import annotations

import html
import random
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from rich.console import RenderableType

from refusal_lens.analyses.categories import (
    CategorySets,
    Outcomes,
    bootstrap_sets,
    category_scores,
    jaccard,
    normalised_asr,
    run_outcomes,
    split_common_specific,
    top_k,
)
from refusal_lens.data import check_disjoint, deduplicate, load_prompts
from refusal_lens.data.prompts import Prompt
from refusal_lens.interventions import FeatureKey, FeatureOp
from refusal_lens.judges import get_judge
from refusal_lens.pipeline.candidates import Candidates
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.progress import make_progress
from refusal_lens.report import ReportSection, img, save_figure, subplots, table
from refusal_lens.scoring import refusal_scores

METHODS = ("all", "specific", "common")  # clamp all of F*; specific (common pinned); common (specific pinned)


def refusal_set(inputs: Inputs) -> list[FeatureKey]:
    """The refusal features every analysis starts from: the attribution stage's global CosSim+AP set."""
    features = [(int(L), int(i)) for L, i in inputs["attribution"].feature_sets["cossim_ap"]]
    if not features:
        raise ValueError("The attribution stage found no CosSim+AP features: nothing to analyse.")
    return features


def attribution_setting(config: RunConfig, section: BaseModel, name: str):
    """``section.<name>``, or the attribution section's value when it is null."""
    own = getattr(section, name)
    if own is not None:
        return own
    attribution = getattr(config, "attribution", None)
    if attribution is None:
        raise ValueError(f"categories.{name} is null (take the attribution section's) but the run config has no "
                         f"attribution section; set categories.{name}.")
    return getattr(attribution, name)


# --- prompts ------------------------------------------------------------------------------
def category_prompts(ctx: RunContext) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]], list[str]]:
    """Seeded samples of each category's train and test prompts (refused ones only, if asked);
    the categories left out, with the reason."""
    config = ctx.config.categories
    prompts = deduplicate([p for source in config.sources for p in load_prompts(source)])
    names = sorted({p.category for p in prompts if p.category})
    if not names:
        raise ValueError(f"categories.sources {config.sources} hold no category labels; use donotanswer, catqa or a "
                         "prompt file with a category column.")
    if config.categories:
        unknown = sorted(set(config.categories) - set(names))
        if unknown:
            raise ValueError(f"categories.categories {unknown} are not in the sources; they hold: {', '.join(names)}.")
        names = [n for n in names if n in set(config.categories)]
    train, test, left_out = {}, {}, []
    for name in names:
        chosen = {}
        for split, n in (("train", config.n_train), ("test", config.n_eval)):
            pool = [p for p in prompts if p.category == name and p.split == split]
            if config.refused_only and pool:
                scores = refusal_scores(ctx.chat_model, [p.text for p in pool], batch_size=ctx.config.batch_size)
                pool = [p for p, s in zip(pool, scores.tolist()) if s > 0]
            chosen[split] = random.Random(ctx.config.seed).sample(pool, min(n, len(pool)))
        if min(len(chosen["train"]), len(chosen["test"])) < config.min_prompts:
            left_out.append(f"{name}: {len(chosen['train'])} train / {len(chosen['test'])} test prompts"
                            f"{' refused' if config.refused_only else ''} (fewer than {config.min_prompts})")
            continue
        train[name], test[name] = chosen["train"], chosen["test"]
    if len(train) < 2:
        raise ValueError(f"Fewer than two categories have enough prompts to compare ({'; '.join(left_out)}). Lower "
                         "categories.min_prompts, raise n_train / n_eval, or add sources.")
    check_disjoint([p for ps in train.values() for p in ps], [p for ps in test.values() for p in ps],
                   what="held-out category")
    return train, test, left_out


# --- the result ---------------------------------------------------------------------------
class MethodOutcome(BaseModel):
    clamped: list[FeatureKey] = Field(description="features clamped (`categories.op`)")
    pinned: list[FeatureKey] = Field(description="features held at their clean value meanwhile")
    asr: float = Field(description="attack success rate on the category's held-out prompts (`evaluation.judge`)")
    ci: tuple[float, float] = Field(description="its 95% Wilson interval")
    normalised_asr: float | None = Field(description="ASR / the `all` ASR on the same prompts (null: `all` "
                                                     "answered none)")
    normalised_ci: tuple[float, float] | None = Field(description="its 95% paired-bootstrap interval")
    score_flip_rate: float = Field(description="share of the prompts with a refusal score < 0")
    mean_refusal_score: float = Field(description="mean refusal score")


class CategoryResult(BaseModel):
    n_train: int = Field(description="training prompts F* was attributed on")
    n_eval: int = Field(description="held-out prompts the interventions were judged on")
    feature_set: list[FeatureKey] = Field(description="F*: the CosSim+AP top k, best first")
    stability: list[float] = Field(description="per member of F*, the share of bootstrap resamples of the "
                                               "training prompts whose F* keeps it")
    specific: list[FeatureKey] = Field(description="F* minus the common features")
    shared_with_global: int = Field(description="members of F* in the global CosSim+AP set (the attribution stage's, "
                                                "on every harmful training prompt)")
    methods: dict[str, MethodOutcome] = Field(description="`all`, `specific` (common pinned), `common` (specific "
                                                          "pinned); a method with nothing to clamp is left out")


class TransferCell(BaseModel):
    asr: float = Field(description="ASR of the target category's held-out prompts with the source's specific set "
                                   "clamped, the common set pinned")
    ci: tuple[float, float] = Field(description="its 95% Wilson interval")
    normalised_asr: float | None = Field(description="over the target's `all` ASR (null: that answered none)")


class HarmCategories(BaseModel):
    sources: list[str] = Field(description="`categories.sources`")
    k: int = Field(description="size of each F*")
    method: str = Field(description="attribution method (`ig` or `atp`)")
    op: str = Field(description="the clamp: `scale` by `scale`, or `zero`")
    scale: float = Field(description="`categories.scale`")
    judge: str = Field(description="`evaluation.judge`")
    categories: dict[str, CategoryResult] = Field(description="category → its sets and outcomes")
    left_out: list[str] = Field(description="categories without enough prompts, with their counts")
    common: list[FeatureKey] = Field(description="the features of every category's F*")
    common_size_ci: tuple[float, float] = Field(description="95% bootstrap interval of the common set's size")
    jaccard: dict[str, dict[str, float]] = Field(description="|F*_A ∩ F*_B| / |F*_A ∪ F*_B|")
    jaccard_ci: dict[str, dict[str, tuple[float, float]]] = Field(description="its 95% bootstrap intervals")
    transfer: dict[str, dict[str, TransferCell]] = Field(description="source category → target category → "
                                                                     "outcome (empty with `categories.transfer` "
                                                                     "off); the diagonal is `specific`")


# --- compute ------------------------------------------------------------------------------
def _outcome(outcomes: Outcomes, reference: Outcomes, clamped, pinned, seed: int) -> MethodOutcome:
    asr = outcomes.asr()
    value, low, high = normalised_asr(outcomes, reference, seed=seed)
    scores = outcomes.scores
    return MethodOutcome(clamped=list(clamped), pinned=list(pinned), asr=asr["rate"], ci=(asr["ci_low"],
                         asr["ci_high"]), normalised_asr=value, normalised_ci=None if value is None else (low, high),
                         score_flip_rate=float(np.mean([s < 0 for s in scores])),
                         mean_refusal_score=float(np.mean(scores)))


class _Judged:
    """Runs the category interventions with the run's judge, generation length and batch size."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        config = ctx.config.categories
        self.op = FeatureOp("zero") if config.op == "zero" else FeatureOp("scale", config.scale)
        self.judge = get_judge(ctx.config.evaluation.judge)

    def __call__(self, prompts: list[Prompt], clamp, pin) -> Outcomes:
        evaluation = self.ctx.config.evaluation
        return run_outcomes(self.ctx.chat_model, self.ctx.saes, [p.text for p in prompts], clamp, self.op, pin,
                            self.judge, max_new_tokens=evaluation.max_new_tokens, batch_size=evaluation.batch_size)


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> HarmCategories:
    config = ctx.config.categories
    k = attribution_setting(ctx.config, config, "k")
    method = attribution_setting(ctx.config, config, "method")
    steps = attribution_setting(ctx.config, config, "steps")
    global_set = set(refusal_set(inputs))
    candidates: Candidates = inputs["candidates"]
    keys = candidates.keys()
    train, test, left_out = category_prompts(ctx)
    direction = load_vector(inputs.dir("direction"))
    scores = {}
    for name, prompts in train.items():
        ctx.console.print(f"  attributing category [bold]{name}[/] ({len(prompts)} prompts)")
        scores[name] = category_scores(ctx.chat_model, ctx.saes, [p.text for p in prompts], direction, keys,
                                       method=method, steps=steps, batch_size=ctx.config.batch_size)
    sets = split_common_specific({name: top_k(keys, s, k) for name, s in scores.items()})
    intervals = bootstrap_sets(keys, scores, k, n_boot=config.n_boot, seed=ctx.config.seed)
    categories, transfer = _interventions(ctx, sets, train, test)
    for name, result in categories.items():
        result.stability = [intervals.stability[name][f] for f in sets.per_category[name]]
        result.shared_with_global = len(set(sets.per_category[name]) & global_set)
    names = list(sets.per_category)
    return HarmCategories(
        sources=config.sources, k=k, method=method, op=config.op, scale=config.scale,
        judge=ctx.config.evaluation.judge, categories=categories, left_out=left_out, common=sets.common,
        common_size_ci=intervals.common_size,
        jaccard={a: {b: jaccard(sets.per_category[a], sets.per_category[b]) for b in names} for a in names},
        jaccard_ci=intervals.jaccard, transfer=transfer)


def _interventions(ctx: RunContext, sets: CategorySets, train, test) -> tuple[dict, dict]:
    run = _Judged(ctx)
    seed = ctx.config.seed
    plans = {name: {"all": (sets.per_category[name], []), "specific": (sets.specific[name], sets.common),
                    "common": (sets.common, sets.specific[name])} for name in sets.per_category}
    total = sum(bool(clamp) for plan in plans.values() for clamp, _ in plan.values())
    if ctx.config.categories.transfer:
        total += sum(bool(sets.specific[a]) for a in plans for b in plans if a != b)
    categories, outcomes, transfer = {}, {}, {}
    with make_progress() as progress:
        task = progress.add_task("category interventions", total=total)
        for name, plan in plans.items():
            done = {}
            for method, (clamp, pin) in plan.items():
                if clamp:
                    done[method] = run(test[name], clamp, pin)
                    progress.advance(task)
            outcomes[name] = done
            categories[name] = CategoryResult(
                n_train=len(train[name]), n_eval=len(test[name]), feature_set=sets.per_category[name], stability=[],
                specific=sets.specific[name], shared_with_global=0,
                methods={m: _outcome(o, done["all"], *plan[m], seed) for m, o in done.items()})
        if ctx.config.categories.transfer:
            for source in plans:
                if not sets.specific[source]:
                    continue
                transfer[source] = {}
                for target in plans:
                    result = (outcomes[target]["specific"] if source == target
                              else run(test[target], sets.specific[source], sets.common))
                    if source != target:
                        progress.advance(task)
                    asr = result.asr()
                    value, _, _ = normalised_asr(result, outcomes[target]["all"], seed=seed)
                    transfer[source][target] = TransferCell(asr=asr["rate"], ci=(asr["ci_low"], asr["ci_high"]),
                                                            normalised_asr=value)
    return categories, transfer


# --- what it shows ------------------------------------------------------------------------
def summary(result: HarmCategories) -> list[RenderableType]:
    parts = []
    for name, category in result.categories.items():
        specific = category.methods.get("specific")
        parts.append(f"{name} {len(category.specific)}/{len(category.feature_set)} specific"
                     + (f", specific ASR {specific.asr:.0%}" if specific else ""))
    return [f"Harm categories: {len(result.common)} common features; " + "; ".join(parts)]


def _label(feature) -> str:
    return f"L{feature[0]}:{feature[1]}"


def fig_overlap(result: HarmCategories, folder: Path) -> str:
    names = list(result.categories)
    members = [{tuple(f) for f in c.feature_set} for c in result.categories.values()]
    union = sorted(set().union(*members), key=lambda f: (-sum(f in m for m in members), f))
    fig, (left, right) = subplots(ncols=2, figsize=(12, max(4, 0.5 * len(names) + 2)),
                                  gridspec_kw={"width_ratios": [1, 1.4]})
    matrix = [[result.jaccard[a][b] for b in names] for a in names]
    image = left.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            low, high = result.jaccard_ci[a][b]
            left.text(j, i, f"{matrix[i][j]:.2f}\n[{low:.2f},{high:.2f}]", ha="center", va="center", fontsize=7,
                      color="white" if matrix[i][j] > 0.6 else "black")
    left.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    left.set_yticks(range(len(names)), names, fontsize=7)
    left.set_title("Jaccard overlap of F* (95% bootstrap CI)")
    fig.colorbar(image, ax=left, fraction=0.046)
    for j, name in enumerate(names):  # UpSet-style membership: dot size = bootstrap stability
        category = result.categories[name]
        stability = dict(zip(map(tuple, category.feature_set), category.stability))
        for i, feature in enumerate(union):
            if feature in stability:
                right.scatter(i, j, s=20 + 120 * stability[feature], color="tab:red" if
                              list(feature) in [list(f) for f in result.common] else "tab:blue")
    right.set_xticks(range(len(union)), [_label(f) for f in union], rotation=90, fontsize=6)
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.set_title("Members of each F* (red: common; size: bootstrap stability)")
    return save_figure(fig, folder, "categories_overlap")


def fig_transfer(result: HarmCategories, folder: Path) -> str | None:
    sources = list(result.transfer)
    if not sources:
        return None
    targets = list(result.categories)
    fig, ax = subplots(figsize=(max(5, 1.2 * len(targets) + 2), max(4, 0.8 * len(sources) + 2)))
    matrix = [[result.transfer[s][t].asr for t in targets] for s in sources]
    image = ax.imshow(matrix, cmap="Reds", vmin=0, vmax=1)
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            cell = result.transfer[s][t]
            ax.text(j, i, f"{cell.asr:.2f}\n[{cell.ci[0]:.2f},{cell.ci[1]:.2f}]", ha="center", va="center",
                    fontsize=7, color="white" if cell.asr > 0.6 else "black")
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(sources)), sources, fontsize=7)
    ax.set_xlabel("prompts of category")
    ax.set_ylabel("specific set of category (common pinned)")
    ax.set_title("Transfer: ASR (95% Wilson CI)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, folder, "categories_transfer")


def fig_normalised(result: HarmCategories, folder: Path) -> str:
    names = list(result.categories)
    fig, ax = subplots(figsize=(max(6, 1.3 * len(names)), 3.5))
    for offset, method, colour in ((-0.2, "specific", "tab:blue"), (0.2, "common", "tab:red")):
        xs, values, errors = [], [], [[], []]
        for i, name in enumerate(names):
            outcome = result.categories[name].methods.get(method)
            if outcome is None or outcome.normalised_asr is None:
                continue
            xs.append(i + offset)
            values.append(outcome.normalised_asr)
            errors[0].append(max(0.0, outcome.normalised_asr - outcome.normalised_ci[0]))
            errors[1].append(max(0.0, outcome.normalised_ci[1] - outcome.normalised_asr))
        ax.bar(xs, values, width=0.4, yerr=errors, capsize=3, color=colour, alpha=0.7,
               label=f"clamp {method} (other pinned)")
    ax.axhline(1, color="black", lw=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ASR / ASR of all F*")
    ax.legend(fontsize=8)
    ax.set_title("Normalised ASR on held-out prompts (95% paired bootstrap CI)")
    return save_figure(fig, folder, "categories_normalised_asr")


def _rows(result: HarmCategories) -> list[list[str]]:
    rows = []
    for name, category in result.categories.items():
        row = [name, category.n_train, category.n_eval, f"{len(category.specific)}/{len(category.feature_set)}",
               f"{category.shared_with_global}/{len(category.feature_set)}"]
        for method in METHODS:
            m = category.methods.get(method)
            row.append("–" if m is None else f"{m.asr:.0%} [{m.ci[0]:.0%}, {m.ci[1]:.0%}]"
                       + ("" if m.normalised_asr is None or method == "all" else f" (×{m.normalised_asr:.2f})"))
        rows.append(row)
    return rows


def report(result: HarmCategories, inputs: Inputs, figures: Path) -> list[ReportSection]:
    low, high = result.common_size_ci
    text = (f"<p>F* per category: the CosSim+AP top {result.k} ({html.escape(result.method)}) on its training "
            f"prompts. {len(result.common)} features are common to all {len(result.categories)} categories "
            f"(95% bootstrap interval of that count: [{low:.0f}, {high:.0f}]). Held-out ASR "
            f"({html.escape(result.judge)} judge) with the clamp {html.escape(result.op)}"
            f"{f' × {result.scale:g}' if result.op == 'scale' else ''}; in brackets the 95% Wilson interval, "
            f"× the ASR over that of all F*.</p>")
    if result.left_out:
        text += f"<p>Left out: {html.escape('; '.join(result.left_out))}.</p>"
    header = ["category", "train", "held out", "specific / F*", "in the global set", "all F*",
              "specific (common pinned)", "common (specific pinned)"]
    body = (text + table(_rows(result), header)
            + img(fig_overlap(result, figures), "category overlap")
            + img(fig_normalised(result, figures), "normalised ASR")
            + img(fig_transfer(result, figures), "transfer heatmap"))
    return [ReportSection("Harm categories", body)]


STAGE = Stage(
    name="categories",
    result=HarmCategories,
    compute=compute,
    reads=("direction", "candidates", "attribution"),
    config_sections=("categories", "evaluation", "seed", "batch_size"),
    summary=summary,
    report=report,
)
