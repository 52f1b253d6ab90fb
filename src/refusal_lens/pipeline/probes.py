"""Stage: out-of-distribution probes [Y25] (METHOD.md §5): refusal features vs matched random
features vs the dense residual, trained on plain prompts, tested on jailbreaks.

Logistic probes trained on plain harmful (1) vs plain harmless (0) prompts of the training
split (C by cross-validation on them only), tested in distribution (test split) and out of
distribution: plain harmful requests (1) vs the adversarial prompts of the jailbreak stage that
jailbroke the model (0). Inputs, one probe each: the last-token activations of the k refusal
features; k random features matched in layers (several seeds); the dense residual at the layer
with the best validation accuracy. No adversarial prompt's plain request may be a training or
validation prompt (``check_disjoint``). Anchor: [Y25] on Gemma-2-2B-IT, 0.87 (refusal features)
vs 0.50 (random) vs 0.51 (dense) out-of-distribution accuracy.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from rich.console import RenderableType

from refusal_lens.activations import read_features, residuals
from refusal_lens.analyses.controls import matched_random_sets
from refusal_lens.analyses.probes import ProbeScore, choose_layer, fit_probe, score_probe
from refusal_lens.data import check_disjoint, near_duplicates
from refusal_lens.data.prompts import Prompt
from refusal_lens.interventions import FeatureKey
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.pipeline.categories import refusal_set
from refusal_lens.pipeline.jailbreaks import Jailbreaks
from refusal_lens.pipeline.prompt_sets import PromptSets, ScoredPrompt
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import ReportSection, img, save_figure, subplots, table

RESIDUAL_BATCH = 16  # prompts a forward pass on the CPU (on a GPU: the largest that fits)
PAPER_ANCHOR = {"refusal_features": 0.87, "random": 0.50, "dense": 0.51}  # [Y25], Gemma-2-2B-IT, OOD accuracy


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray


def _split(harmful: list[str], harmless: list[str]) -> Split:
    return Split([*harmful, *harmless], np.array([1] * len(harmful) + [0] * len(harmless)))


def _unique(*groups: list[ScoredPrompt]) -> list[ScoredPrompt]:
    return list({p.id: p for group in groups for p in group}.values())


def probe_splits(sets: PromptSets, jailbreaks: Jailbreaks) -> tuple[dict[str, Split], int]:
    """train / val / test (in distribution) / ood, and how many unpaired adversarial prompts were
    left out of ood as near a training or validation prompt.

    ood: plain harmful requests the model refuses (the pairs' plain requests and the held-out
    harmful prompts with a positive refusal score) vs adversarial prompts it answers (the pairs'
    and the unpaired ones). Fails if a pair's plain request is a training or validation prompt; an
    unpaired prompt, whose plain request is unknown, is left out when it shares most content words
    with one (a rephrasing of it)."""
    train_harmful, train_harmless = _unique(sets.harmful_train, sets.harmful_fm), _unique(sets.harmless_train,
                                                                                         sets.harmless_fm)
    seen = [p.as_prompt("probe") for p in (*train_harmful, *train_harmless, *sets.harmful_val, *sets.harmless_val)]
    plains = [Prompt(id=p.plain_id, text=p.plain, source="jailbreaks") for p in jailbreaks.pairs]
    check_disjoint(seen, plains, what="out-of-distribution probe (plain requests of the jailbreak pairs)")
    unpaired = [Prompt(id=p.id, text=p.adversarial, source="jailbreaks") for p in jailbreaks.unpaired]
    near = {p.id for p in near_duplicates(unpaired, seen)}
    splits = {"train": _split([p.text for p in train_harmful], [p.text for p in train_harmless]),
              "val": _split([p.text for p in sets.harmful_val], [p.text for p in sets.harmless_val]),
              "test": _split([p.text for p in sets.harmful_eval], [p.text for p in sets.harmless_eval])}
    adversarial = [p.adversarial for p in jailbreaks.pairs] + [p.text for p in unpaired if p.id not in near]
    if adversarial:
        refused = [p.text for p in sets.harmful_eval if p.score > 0]
        splits["ood"] = _split(list(dict.fromkeys([p.plain for p in jailbreaks.pairs] + refused)), adversarial)
    return splits, len(near)


# --- the result ---------------------------------------------------------------------------
class Score(BaseModel):
    accuracy: float = Field(description="share of the rows classified right")
    accuracy_ci: tuple[float, float] = Field(description="its 95% bootstrap interval")
    auroc: float | None = Field(description="area under the ROC curve (null: one class only)")
    auroc_ci: tuple[float, float] | None = Field(description="its 95% bootstrap interval")
    n: int = Field(description="rows")

    @classmethod
    def of(cls, score: ProbeScore) -> Score:
        return cls(**score.__dict__)


class ProbeResult(BaseModel):
    features: list[FeatureKey] | None = Field(description="the SAE features read (null for the dense probe)")
    layer: int | None = Field(description="the dense probe's layer (null for feature probes)")
    in_distribution: Score | None = Field(description="plain harmful vs plain harmless, test split (null: no "
                                                      "harmless test prompts, `data.n_capability = 0`)")
    out_of_distribution: Score | None = Field(description="plain harmful (1) vs adversarial prompts that "
                                                          "jailbroke the model (0) (null: no jailbroken pair)")


class Probes(BaseModel):
    n_train: int = Field(description="training rows (plain harmful + plain harmless, train split)")
    n_val: int = Field(description="validation rows (the dense layer's choice)")
    n_ood: dict[str, int] = Field(default_factory=dict, description=(
        "out-of-distribution rows: `plain` harmful requests the model refuses, `adversarial` prompts it answers, "
        "`near_training` unpaired adversarial prompts left out as rephrasings of a training or validation prompt"))
    probes: dict[str, ProbeResult] = Field(description="`refusal_features`, `random_1..n`, `dense`")
    dense_validation_accuracy: dict[int, float] = Field(description="layer → validation accuracy of its probe (C = 1)")
    dense_validation_log_loss: dict[int, float] = Field(default_factory=dict, description=(
        "layer → validation log-loss of that probe (breaks ties of accuracy)"))
    anchor: dict[str, float] = Field(description="[Y25]'s out-of-distribution accuracies on Gemma-2-2B-IT")


# --- compute ------------------------------------------------------------------------------
def _last_token_features(ctx: RunContext, texts: list[str], features: list[FeatureKey]) -> np.ndarray:
    return read_features(ctx.chat_model, ctx.saes, texts, features, positions=[-1],
                         batch_size=ctx.config.batch_size).values[:, 0].double().numpy()


def _last_token_residuals(ctx: RunContext, texts: list[str], layers: list[int]) -> dict[int, np.ndarray]:
    model = ctx.chat_model

    def read(chunk: list[str]) -> torch.Tensor:  # [prompts, layers, d_model]
        found = residuals(model, chunk, layers, positions=[-1])
        return torch.stack([found[L][:, 0].double().cpu() for L in layers], dim=1)

    stacked = torch.cat(run_batched(model, "last_token_residuals", texts, read, batch_size=ctx.config.batch_size,
                                    default=RESIDUAL_BATCH, tokens=lambda part: longest_prompt(model, part),
                                    progress="residuals"))
    return {L: stacked[:, j].numpy() for j, L in enumerate(layers)}


def _evaluate(probe, x_by_split: dict[str, np.ndarray], splits: dict[str, Split], n_boot: int, seed: int):
    scores = {}
    for name in ("test", "ood"):
        split = splits.get(name)
        usable = split is not None and len(split.labels) and len(np.unique(split.labels)) == 2
        scores[name] = Score.of(score_probe(probe, x_by_split[name], split.labels, n_boot=n_boot, seed=seed)) \
            if usable else None
    return scores


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Probes:
    config = ctx.config.probes
    seed = ctx.config.seed
    refusal = refusal_set(inputs)
    splits, near_training = probe_splits(inputs["prompt_sets"], inputs["jailbreaks"])
    ood = splits.get("ood")
    n_ood = {"plain": int(ood.labels.sum()) if ood else 0, "adversarial": int((ood.labels == 0).sum()) if ood else 0,
             "near_training": near_training}
    results = {}
    feature_sets = {"refusal_features": refusal}
    for i, random_set in enumerate(matched_random_sets(ctx.saes, refusal, config.n_random_sets, seed)):
        feature_sets[f"random_{i + 1}"] = random_set
    for name, features in feature_sets.items():
        x = {split: _last_token_features(ctx, s.texts, features) for split, s in splits.items() if s.texts}
        probe = fit_probe(x["train"], splits["train"].labels, folds=config.folds, n_cs=config.n_cs, seed=seed)
        scores = _evaluate(probe, x, splits, config.n_boot, seed)
        results[name] = ProbeResult(features=features, layer=None, in_distribution=scores["test"],
                                    out_of_distribution=scores["ood"])
    layers = list(range(ctx.chat_model.n_layers)) if config.layers == "all" else sorted(set(config.layers))
    dense = {split: _last_token_residuals(ctx, s.texts, layers) for split, s in splits.items() if s.texts}
    choice = choose_layer(dense["train"], splits["train"].labels, dense["val"], splits["val"].labels, seed=seed)
    probe = fit_probe(dense["train"][choice.layer], splits["train"].labels, folds=config.folds, n_cs=config.n_cs,
                      seed=seed)
    scores = _evaluate(probe, {split: values[choice.layer] for split, values in dense.items()}, splits,
                       config.n_boot, seed)
    results["dense"] = ProbeResult(features=None, layer=choice.layer, in_distribution=scores["test"],
                                   out_of_distribution=scores["ood"])
    return Probes(n_train=len(splits["train"].labels), n_val=len(splits["val"].labels), n_ood=n_ood, probes=results,
                  dense_validation_accuracy=choice.validation_accuracy,
                  dense_validation_log_loss=choice.validation_log_loss, anchor=PAPER_ANCHOR)


# --- what it shows ------------------------------------------------------------------------
def _score_text(score: Score | None, metric: str = "accuracy") -> str:
    if score is None:
        return "–"
    value, ci = getattr(score, metric), getattr(score, f"{metric}_ci")
    return "–" if value is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def summary(result: Probes) -> list[RenderableType]:
    parts = [f"{name} {_score_text(p.out_of_distribution)}" for name, p in result.probes.items()]
    rows = (f" ({result.n_ood['plain']} plain refused vs {result.n_ood['adversarial']} adversarial answered)"
            if result.n_ood else "")
    return [f"Probes, out-of-distribution accuracy{rows}: {'; '.join(parts)}"]


def fig_probes(result: Probes, folder: Path) -> str:
    names = list(result.probes)
    fig, axes = subplots(ncols=2, figsize=(11, 3.8), sharey=True)
    for ax, metric in zip(axes, ("accuracy", "auroc")):
        for offset, key, colour, label in ((-0.2, "in_distribution", "tab:blue", "in distribution"),
                                           (0.2, "out_of_distribution", "tab:red", "out of distribution")):
            xs, values, errors = [], [], [[], []]
            for i, name in enumerate(names):
                score = getattr(result.probes[name], key)
                value = None if score is None else getattr(score, metric)
                if value is None:
                    continue
                low, high = getattr(score, f"{metric}_ci")
                xs.append(i + offset)
                values.append(value)
                errors[0].append(max(0.0, value - low))
                errors[1].append(max(0.0, high - value))
            ax.bar(xs, values, width=0.4, yerr=errors, capsize=3, color=colour, alpha=0.7, label=label)
        ax.axhline(0.5, color="gray", lw=1, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} (95% bootstrap CI)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, folder, "probes")


def _ood_counts(result: Probes) -> str:
    if not result.n_ood:
        return ""
    near = result.n_ood.get("near_training", 0)
    left_out = f"; {near} unpaired adversarial prompts left out as rephrasings of training prompts" if near else ""
    return f": {result.n_ood['plain']} plain, {result.n_ood['adversarial']} adversarial{left_out}"


def report(result: Probes, inputs: Inputs, figures: Path) -> list[ReportSection]:
    rows = [[name, "–" if p.layer is None else f"layer {p.layer}", _score_text(p.in_distribution),
             _score_text(p.out_of_distribution), _score_text(p.out_of_distribution, "auroc")]
            for name, p in result.probes.items()]
    anchor = ", ".join(f"{k} {v:.2f}" for k, v in result.anchor.items())
    text = (f"<p>Logistic probes (C by cross-validation on the {result.n_train} training rows only) on plain harmful "
            f"vs plain harmless prompts; tested on the test split (in distribution) and on plain harmful requests the "
            f"model refuses vs adversarial prompts that jailbroke it (out of distribution{_ood_counts(result)}). "
            f"The dense probe's layer has the "
            f"best accuracy on the {result.n_val} validation rows. [Y25]'s out-of-distribution accuracy on "
            f"Gemma-2-2B-IT: {html.escape(anchor)}.</p>")
    return [ReportSection("Out-of-distribution probes", (
        text + table(rows, ["probe", "input", "accuracy, in distribution", "accuracy, out of distribution",
                            "AUROC, out of distribution"]) + img(fig_probes(result, figures), "probe scores")))]


STAGE = Stage(
    name="probes",
    result=Probes,
    compute=compute,
    reads=("prompt_sets", "attribution", "jailbreaks"),
    config_sections=("probes", "seed", "batch_size"),
    summary=summary,
    report=report,
)
