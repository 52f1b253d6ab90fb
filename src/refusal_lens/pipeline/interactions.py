"""Stage 4: features interacting with the minimal set, via a factorization machine (METHOD.md §4.3).

``y = w0 + sum w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j`` is fitted to tell harmful from
harmless prompts from SAE activations at the last prompt position. A non-minimal feature's
interaction strength is ``sum_{j in minimal} |<v_i, v_j>|``. Baseline: a logistic probe's |w|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from refusal_lens.activations import FeatureActivations
from refusal_lens.interventions import FeatureKey
from refusal_lens.pipeline.config import InteractionsConfig


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
