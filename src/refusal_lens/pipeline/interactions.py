"""Stage: features interacting with the minimal set, via a factorization machine (METHOD.md §4.3).

``y = w0 + sum w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j`` is fitted to tell harmful from
harmless prompts from SAE activations at the last prompt position. A non-minimal feature's
interaction strength is ``sum_{j in minimal} |<v_i, v_j>|``. Baseline: a logistic probe's |w|.
The top-K of each ranking, with and without the minimal set, is then ablated on the search
prompts (the sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from sklearn.linear_model import LogisticRegression
from torch import nn

from refusal_lens.activations import FeatureActivations, read_features
from refusal_lens.interventions import FeatureKey, FeatureOp
from refusal_lens.pipeline.config import InteractionsConfig
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.search import MinimalSets, SetEvaluator
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.prefix_cache import build_prefix_cache
from refusal_lens.report import ReportSection, img, save_figure, subplots, table


class FactorizationMachine(nn.Module):
    """A second-order factorization machine (Rendle 2010), logits out."""

    def __init__(self, n_features: int, embedding_dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.linear = nn.Linear(n_features, 1, bias=False)
        self.embeddings = nn.Parameter(torch.randn(n_features, embedding_dim) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xv = x @ self.embeddings
        pairwise = 0.5 * (xv.pow(2) - (x.pow(2) @ self.embeddings.pow(2))).sum(-1)
        return self.bias + self.linear(x).squeeze(-1) + pairwise


def design_matrix(features: FeatureActivations, minimal: Sequence[FeatureKey],
                  max_features: int) -> tuple[torch.Tensor, list[FeatureKey]]:
    """The most often active features (and every minimal one) as columns, scaled to [0, 1].

    ``features``: one value a prompt and feature, e.g. ``read_features(..., all_active=layers,
    positions=[-1])``."""
    if features.values.dim() == 3 and features.values.shape[1] != 1:
        raise ValueError(f"A design matrix takes one position a prompt; got {features.values.shape[1]}.")
    acts = features.values.reshape(len(features.values), -1)
    keys = list(features.keys)
    frequency = (acts > 0).sum(0).tolist()
    columns = list(acts.unbind(1))
    must = {tuple(f) for f in minimal}
    order = sorted(range(len(keys)), key=lambda j: (keys[j] not in must, -frequency[j]))[:max_features]
    for f in must - {keys[j] for j in order}:   # minimal features that never fire here
        keys.append(f)
        columns.append(features.column(f).reshape(-1))
        order.append(len(keys) - 1)
    x = torch.stack([columns[j] for j in order], dim=1)
    return x / x.amax(0).clamp_min(1e-6), [keys[j] for j in order]


@dataclass
class FMResult:
    model: FactorizationMachine
    keys: list[FeatureKey]
    train_accuracy: float
    test_accuracy: float


def train_fm(x: torch.Tensor, y: torch.Tensor, keys: list[FeatureKey], config: InteractionsConfig,
             seed: int) -> FMResult:
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=generator)
    n_test = max(1, len(y) // 5)
    test, train = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed)
    model = FactorizationMachine(x.shape[1], config.embedding_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(train), generator=generator).split(config.batch_size):
            batch = train[idx]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = lambda rows: ((model(x[rows]) > 0).float() == y[rows]).float().mean().item()  # noqa: E731
        return FMResult(model, keys, accuracy(train), accuracy(test))


def interaction_ranking(fm: FMResult, minimal: Sequence[FeatureKey]) -> tuple[list[dict], list[dict]]:
    """Non-minimal features by interaction strength with the minimal set; and the top pairs."""
    index = {k: j for j, k in enumerate(fm.keys)}
    members = [index[tuple(f)] for f in minimal if tuple(f) in index]
    with torch.no_grad():
        v = fm.model.embeddings
        gram = v @ v[members].T if members else torch.zeros(len(fm.keys), 0)
    strength = gram.abs().sum(1)
    minimal_set = {tuple(f) for f in minimal}
    ranking = [{"layer": k[0], "feature": k[1], "strength": float(strength[j])}
               for j, k in enumerate(fm.keys) if k not in minimal_set]
    ranking.sort(key=lambda r: -r["strength"])
    pairs = []
    for j, k in enumerate(fm.keys):
        if k in minimal_set:
            continue
        for col, m in enumerate(members):
            pairs.append({"feature": list(k), "minimal_feature": list(fm.keys[m]), "strength": float(gram[j, col])})
    pairs.sort(key=lambda p: -abs(p["strength"]))
    return ranking, pairs[:50]


def probe_ranking(x: torch.Tensor, y: torch.Tensor, keys: list[FeatureKey], minimal: Sequence[FeatureKey],
                  seed: int) -> tuple[list[dict], float]:
    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(x.numpy(), y.numpy())
    weights = np.abs(probe.coef_[0])
    minimal_set = {tuple(f) for f in minimal}
    ranking = [{"layer": k[0], "feature": k[1], "weight": float(w)}
               for k, w in zip(keys, weights) if k not in minimal_set]
    ranking.sort(key=lambda r: -r["weight"])
    return ranking, float(probe.score(x.numpy(), y.numpy()))


# --- the stage ----------------------------------------------------------------------------
class FMFit(BaseModel):
    n_features: int = Field(description="input features: the most often active ones and every minimal one")
    n_prompts: int = Field(description="harmful + harmless prompts (`prompt_sets.*_fm`)")
    train_accuracy: float = Field(description="harmful vs harmless, on the 80% it was fitted on")
    test_accuracy: float = Field(description="on the held-back 20%")
    embedding_dim: int = Field(description="`interactions.embedding_dim`")


class InteractionRank(BaseModel):
    layer: int = Field(description="the feature's layer")
    feature: int = Field(description="its index")
    strength: float = Field(description="sum over the minimal set of |⟨v_i, v_j⟩|")


class ProbeRank(BaseModel):
    layer: int = Field(description="the feature's layer")
    feature: int = Field(description="its index")
    weight: float = Field(description="|w| of the logistic probe")


class FeaturePair(BaseModel):
    feature: FeatureKey = Field(description="a feature outside the minimal set")
    minimal_feature: FeatureKey = Field(description="a member of the minimal set")
    strength: float = Field(description="⟨v_i, v_j⟩")


class SweepRow(BaseModel):
    k: int = Field(description="features taken from the top of a ranking (`interactions.top_k`)")
    fm_with_minimal: float = Field(description="flip rate (refusal score < 0) of the search prompts with the FM's "
                                               "top-k and the minimal set ablated")
    fm_only: float = Field(description="... with the FM's top-k alone")
    probe_with_minimal: float = Field(description="... with the probe's top-k and the minimal set")
    probe_only: float = Field(description="... with the probe's top-k alone")


class Gram(BaseModel):
    rows: list[FeatureKey] = Field(description="the 20 strongest interacting features")
    cols: list[FeatureKey] = Field(description="minimal-set members among the FM's inputs (at most 30)")
    values: list[list[float]] = Field(description="⟨v_row, v_col⟩")


class Interactions(BaseModel):
    fm: FMFit = Field(description="the factorization machine's fit")
    probe_train_accuracy: float = Field(description="the logistic probe's accuracy on its training prompts")
    ranking: list[InteractionRank] = Field(description="non-minimal features by interaction strength "
                                                       "(the top 2 × max `interactions.top_k`)")
    probe_ranking: list[ProbeRank] = Field(description="non-minimal features by probe weight (as many)")
    top_pairs: list[FeaturePair] = Field(description="the 50 strongest (feature, minimal feature) interactions")
    sweep: list[SweepRow] = Field(description="one row per k")
    minimal_set: list[FeatureKey] = Field(description="the minimal set the interactions are measured against "
                                                      "(the search's shared ∩ seeds, or ∪ when that is empty)")
    gram: Gram = Field(description="the interaction heat map of the report")


def _gram_for_report(fm: FMResult, top: list[dict], minimal: Sequence[FeatureKey]) -> dict:
    index = {k: j for j, k in enumerate(fm.keys)}
    rows = [(r["layer"], r["feature"]) for r in top]
    cols = [tuple(f) for f in minimal if tuple(f) in index][:30]
    with torch.no_grad():
        v = fm.model.embeddings
        gram = (v[[index[r] for r in rows]] @ v[[index[c] for c in cols]].T).tolist() if rows and cols else []
    return {"rows": [list(r) for r in rows], "cols": [list(c) for c in cols], "values": gram}


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Interactions:
    config = ctx.config.interactions
    sets: PromptSets = inputs["prompt_sets"]
    search: MinimalSets = inputs["search"]
    minimal = search.minimal_shared()
    harmful, harmless = texts(sets.harmful_fm), texts(sets.harmless_fm)
    acts = read_features(ctx.chat_model, ctx.saes, harmful + harmless, all_active=ctx.saes.layers, positions=[-1],
                         batch_size=ctx.config.batch_size)
    x, keys = design_matrix(acts, minimal, config.max_features)
    y = torch.tensor([1.0] * len(harmful) + [0.0] * len(harmless))
    fm = train_fm(x, y, keys, config, ctx.config.seed)
    ranking, pairs = interaction_ranking(fm, minimal)
    probe, probe_accuracy = probe_ranking(x, y, keys, minimal, ctx.config.seed)
    search_texts = texts(sets.harmful_search)
    start = min([L for L, _ in keys] + [L for L, _ in minimal])
    evaluate = SetEvaluator(ctx.chat_model, ctx.saes, build_prefix_cache(ctx.chat_model, search_texts, start),
                            FeatureOp("zero"), ctx.config.search.rows_per_forward)
    sweep = []
    for k in config.top_k:
        fm_top = [(r["layer"], r["feature"]) for r in ranking[:k]]
        probe_top = [(r["layer"], r["feature"]) for r in probe[:k]]
        variants = {"fm_with_minimal": fm_top + minimal, "fm_only": fm_top,
                    "probe_with_minimal": probe_top + minimal, "probe_only": probe_top}
        pairs_to_score = [(p, features) for features in variants.values() for p in range(len(search_texts))]
        scores, _ = evaluate(pairs_to_score)
        n = len(search_texts)
        row = {"k": k}
        for j, name in enumerate(variants):
            row[name] = (scores[j * n:(j + 1) * n] < 0).float().mean().item()
        sweep.append(row)
    kept = max(config.top_k) * 2
    return Interactions(
        fm=FMFit(n_features=len(keys), n_prompts=len(y), train_accuracy=fm.train_accuracy,
                 test_accuracy=fm.test_accuracy, embedding_dim=config.embedding_dim),
        probe_train_accuracy=probe_accuracy, ranking=ranking[:kept], probe_ranking=probe[:kept], top_pairs=pairs,
        sweep=sweep, minimal_set=minimal, gram=_gram_for_report(fm, ranking[:20], minimal))


def summary(result: Interactions) -> list[str]:
    return [f"Factorization machine: test accuracy {result.fm.test_accuracy:.1%} on {result.fm.n_features} features"]


def fig_interactions(gram: Gram, folder: Path) -> str | None:
    if not gram.values:
        return None
    fig, ax = subplots(figsize=(max(4, 0.3 * len(gram.cols) + 2), max(3, 0.25 * len(gram.rows) + 1.5)))
    image = ax.imshow(gram.values, cmap="RdBu_r", aspect="auto")
    vmax = max(abs(v) for row in gram.values for v in row) or 1
    image.set_clim(-vmax, vmax)
    ax.set_yticks(range(len(gram.rows)), [f"L{r[0]}:{r[1]}" for r in gram.rows], fontsize=6)
    ax.set_xticks(range(len(gram.cols)), [f"L{c[0]}:{c[1]}" for c in gram.cols], fontsize=6, rotation=90)
    ax.set_xlabel("minimal-set features")
    ax.set_ylabel("top interacting features")
    fig.colorbar(image, ax=ax, label="<v_i, v_j>")
    ax.set_title("Factorization-machine interactions")
    return save_figure(fig, folder, "interactions")


def report(result: Interactions, inputs: Inputs, figures: Path) -> list[ReportSection]:
    sweep = [[r.k, *(f"{v:.0%}" for v in (r.fm_with_minimal, r.fm_only, r.probe_with_minimal, r.probe_only))]
             for r in result.sweep]
    return [ReportSection("Interactions", (
        f"<p>Factorization machine on {result.fm.n_features} features: test accuracy "
        f"{result.fm.test_accuracy:.1%}. Refusal-score flip rate of the search prompts with the top-K features "
        f"of each ranking ablated:</p>"
        + table(sweep, ["K", "FM top-K + minimal", "FM top-K", "probe top-K + minimal", "probe top-K"])
        + img(fig_interactions(result.gram, figures), "interaction heatmap")))]


STAGE = Stage(
    name="interactions",
    result=Interactions,
    compute=compute,
    reads=("prompt_sets", "search"),
    config_sections=("interactions",),
    summary=summary,
    report=report,
)
