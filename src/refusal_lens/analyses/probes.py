"""Out-of-distribution probes [Y25] (METHOD.md §5) on arrays: logistic regression trained on plain
harmful (1) vs plain harmless (0) prompts, tested in distribution and on plain harmful (1) vs
adversarial harmful prompts that jailbroke the model (0).

The regularisation is chosen by cross-validation on the training rows only
(``LogisticRegressionCV``, inputs standardised on the training rows); the dense probe's layer
is the one with the best validation accuracy (ties: the lower validation log-loss), never the
best test one. Accuracy and AUROC
come with percentile bootstrap intervals over the test rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from refusal_lens.stats import bootstrap_interval


def fit_probe(x: np.ndarray, y: np.ndarray, *, folds: int = 5, n_cs: int = 10, seed: int = 0) -> Pipeline:
    """Standardise, then an L2 logistic regression whose C (``n_cs`` values on a log grid) is chosen
    by ``folds``-fold stratified cross-validation on ``(x, y)`` by log-loss (fewer folds when a
    class has fewer rows)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=int)
    counts = np.bincount(y, minlength=2)
    if len(counts) != 2 or counts.min() < 2:
        raise ValueError(f"A probe needs at least 2 training rows of each class; got {counts.tolist()} (label 0, 1).")
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=n_cs, cv=min(folds, int(counts.min())),
                                                                 scoring="neg_log_loss", max_iter=5000,
                                                                 random_state=seed))
    with warnings.catch_warnings():  # scikit-learn 1.9 announces changes of defaults we do not rely on
        warnings.simplefilter("ignore", FutureWarning)
        return probe.fit(x, y)


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float
    accuracy_ci: tuple[float, float]
    auroc: float | None              # None when the test rows hold one class only
    auroc_ci: tuple[float, float] | None
    n: int


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    """The Mann-Whitney form of the AUROC (ties count half); NaN with one class."""
    positives = y == 1
    n1, n0 = int(positives.sum()), int((~positives).sum())
    if not n1 or not n0:
        return float("nan")
    return float((rankdata(p)[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def score_probe(probe: Pipeline, x: np.ndarray, y: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> ProbeScore:
    """Accuracy and AUROC on ``(x, y)`` with 95% percentile bootstrap intervals (rows resampled)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=int)
    if not len(y):
        raise ValueError("No test rows to score the probe on.")
    correct = (probe.predict(x) == y).astype(float)
    p = probe.predict_proba(x)[:, 1]
    accuracy_ci = bootstrap_interval(len(y), lambda rows: float(correct[rows].mean()), n_boot=n_boot, seed=seed)
    auroc = _auroc(y, p)
    auroc_ci = (bootstrap_interval(len(y), lambda rows: _auroc(y[rows], p[rows]), n_boot=n_boot, seed=seed)
                if not np.isnan(auroc) else None)
    return ProbeScore(float(correct.mean()), accuracy_ci, None if np.isnan(auroc) else auroc, auroc_ci, len(y))


@dataclass(frozen=True)
class LayerChoice:
    layer: int
    validation_accuracy: dict[int, float]   # every layer tried
    validation_log_loss: dict[int, float]


def choose_layer(train: Mapping[int, np.ndarray], y_train: np.ndarray, val: Mapping[int, np.ndarray],
                 y_val: np.ndarray, *, seed: int = 0) -> LayerChoice:
    """The layer whose probe (fitted on ``train[layer]``) is most accurate on ``val[layer]``;
    ties (common: a few validation rows, many separable layers) go to the lower validation
    log-loss, then to the lower layer.

    Each layer's probe here has a fixed C = 1 on standardised inputs: cross-validating C at every
    layer (50 fits of a wide residual each) made the choice minutes of CPU on an 8B model, and the
    chosen layer's probe chooses its C by cross-validation afterwards (``fit_probe``)."""
    y_train, y_val = np.asarray(y_train, dtype=int), np.asarray(y_val, dtype=int)
    accuracy, loss = {}, {}
    for layer in sorted(train):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))
        probe.fit(np.asarray(train[layer], dtype=float), y_train)
        x_val = np.asarray(val[layer], dtype=float)
        accuracy[layer] = float((probe.predict(x_val) == y_val).mean())
        loss[layer] = float(log_loss(y_val, probe.predict_proba(x_val)[:, 1], labels=[0, 1]))
    best = max(accuracy, key=lambda layer: (accuracy[layer], -loss[layer], -layer))
    return LayerChoice(best, accuracy, loss)
