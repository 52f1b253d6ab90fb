"""The interactions stage's parts on synthetic data: the factorization machine, its ranking, the probe
baseline and the design matrix (METHOD.md §4.3)."""

import pytest
import torch

from refusal_lens.pipeline.config import InteractionsConfig
from refusal_lens.activations import FeatureActivations
from refusal_lens.pipeline.interactions import (FactorizationMachine, FMResult, design_matrix, interaction_ranking,
                                                probe_ranking, train_fm)

KEYS = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
A, B, LINEAR = 0, 1, 2  # columns: a planted interacting pair, a purely linear feature, three noise features
FAST = InteractionsConfig(embedding_dim=4, learning_rate=0.05, epochs=40, batch_size=64)


def planted_data(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations in [0, 1]; the label follows the sign of (x_a - 1/2)(x_b - 1/2), an XOR that no
    linear model separates, plus a purely linear push from one more feature."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, len(KEYS), generator=gen)
    logit = 20 * (x[:, A] - 0.5) * (x[:, B] - 0.5) + 3 * (x[:, LINEAR] - 0.5)
    return x, (logit > 0).float()


def pair_weights(model: FactorizationMachine) -> torch.Tensor:
    """``<v_i, v_j>`` for i != j (the diagonal zeroed: the FM has no x_i^2 term)."""
    with torch.no_grad():
        gram = model.embeddings @ model.embeddings.T
    return gram.fill_diagonal_(0)


@pytest.fixture(scope="module")
def planted_fm():
    x, y = planted_data()
    return train_fm(x, y, KEYS, FAST, seed=0)


def test_fm_recovers_a_planted_pairwise_interaction(planted_fm):
    gram = pair_weights(planted_fm.model)
    strongest = divmod(int(gram.abs().argmax()), len(KEYS))
    assert set(strongest) == {A, B}
    assert gram[A, B] > 2  # positive: the label rises with x_a * x_b
    assert gram[LINEAR].abs().max() < 0.2 * gram[A, B]  # a linear feature gets next to no interaction
    assert planted_fm.model.linear.weight[0, LINEAR] > 1
    assert planted_fm.test_accuracy > 0.85 and planted_fm.train_accuracy > 0.85  # linear terms alone: ~0.7


def test_fm_forward_is_the_pairwise_sum():
    """``0.5 * ((xV)^2 - x^2 V^2)`` is ``sum_{i<j} <v_i, v_j> x_i x_j``, checked term by term."""
    torch.manual_seed(0)
    model = FactorizationMachine(5, 3)
    with torch.no_grad():
        model.embeddings.normal_()
        model.bias.fill_(0.3)
    x = torch.rand(4, 5)
    gram = model.embeddings @ model.embeddings.T
    pairwise = sum(gram[i, j] * x[:, i] * x[:, j] for i in range(5) for j in range(i + 1, 5))
    expected = 0.3 + x @ model.linear.weight[0] + pairwise
    torch.testing.assert_close(model(x), expected.detach())


def test_fm_is_reproducible_from_its_seed():
    x, y = planted_data(n=200)
    config = InteractionsConfig(embedding_dim=4, epochs=2, batch_size=32)
    first, second = (train_fm(x, y, KEYS, config, seed=5) for _ in range(2))
    torch.testing.assert_close(first.model.embeddings, second.model.embeddings)
    assert first.test_accuracy == second.test_accuracy


def hand_set_fm(embeddings: list[list[float]], keys: list[tuple[int, int]]) -> FMResult:
    model = FactorizationMachine(len(keys), len(embeddings[0]))
    with torch.no_grad():
        model.embeddings.copy_(torch.tensor(embeddings))
    return FMResult(model, keys, train_accuracy=1.0, test_accuracy=1.0)


def test_interaction_ranking_sums_absolute_inner_products_with_the_minimal_set():
    keys = [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    fm = hand_set_fm([[1, 0], [0, 1], [-3, 0], [2.5, 5], [0, 2]], keys)
    minimal = [[1, 0], [3, 0], [4, 7]]  # as read from JSON; (4, 7) is not an FM column
    ranking, pairs = interaction_ranking(fm, minimal)
    # strengths: (1,1) |0|+|2| = 2, (2,0) |-3|+|0| = 3, (2,1) |2.5|+|10| = 12.5; minimal features left out
    assert [(r["layer"], r["feature"]) for r in ranking] == [(2, 1), (2, 0), (1, 1)]
    assert [r["strength"] for r in ranking] == pytest.approx([12.5, 3, 2])
    assert [(p["feature"], p["minimal_feature"], p["strength"]) for p in pairs[:3]] == [
        ([2, 1], [3, 0], pytest.approx(10)), ([2, 0], [1, 0], pytest.approx(-3)), ([2, 1], [1, 0], pytest.approx(2.5))]
    assert len(pairs) == 3 * 2 and not {tuple(p["feature"]) for p in pairs} & {(1, 0), (3, 0)}


def test_interaction_ranking_finds_the_feature_that_interacts_with_the_minimal_set(planted_fm):
    ranking, pairs = interaction_ranking(planted_fm, [KEYS[A]])
    assert (ranking[0]["layer"], ranking[0]["feature"]) == KEYS[B]
    assert ranking[0]["strength"] > 3 * ranking[1]["strength"]
    assert KEYS[A] not in {(r["layer"], r["feature"]) for r in ranking}
    assert (pairs[0]["feature"], pairs[0]["minimal_feature"]) == (list(KEYS[B]), list(KEYS[A]))


def test_interaction_ranking_without_minimal_features_in_the_fm():
    fm = hand_set_fm([[1, 0], [0, 1]], [(1, 0), (1, 1)])
    ranking, pairs = interaction_ranking(fm, [(5, 5)])
    assert [r["strength"] for r in ranking] == [0, 0] and pairs == []


def test_probe_ranking_orders_by_absolute_weight_and_leaves_out_the_minimal_set():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(600, 4, generator=gen)
    keys = [(1, 3), (1, 4), (2, 0), (2, 9)]
    # (1, 3) is minimal; (1, 4) pulls hardest, against the label; (2, 0) pushes weakly; (2, 9) is noise
    y = ((4 * x[:, 0] - 8 * x[:, 1] + 2 * x[:, 2] + 1) > 0).long()
    ranking, accuracy = probe_ranking(x, y, keys, [[1, 3]], seed=0)
    assert [(r["layer"], r["feature"]) for r in ranking] == [(1, 4), (2, 0), (2, 9)]
    assert all(r["weight"] >= 0 for r in ranking) and ranking[0]["weight"] > 2 * ranking[1]["weight"]
    assert accuracy > 0.9


def test_design_matrix_keeps_the_minimal_set_and_the_most_often_active_features():
    acts = {1: torch.zeros(6, 5), 2: torch.zeros(6, 3)}
    acts[1][:5, 0] = 1.0        # active on 5 prompts
    acts[1][:1, 1] = 4.0        # minimal, active on 1
    acts[1][:3, 3] = 2.0        # active on 3
    acts[1][:, 4] = torch.arange(1.0, 7.0)  # active on every prompt
    acts[2][:2, 0] = 3.0        # active on 2
    acts[2][:4, 2] = 0.5        # active on 4
    minimal = [[1, 1], [2, 1]]  # (2, 1) never fires
    read = [(layer, i) for layer, a in acts.items() for i in range(a.shape[1]) if (a[:, i] > 0).any()]
    features = FeatureActivations(keys=read, values=torch.stack([acts[L][:, i] for L, i in read], dim=1),
                                  mask=torch.ones(6, 1, dtype=torch.bool), all_active=(1, 2))
    x, keys = design_matrix(features, minimal, max_features=3)
    # active minimal features first, then the most often active up to max_features, then the silent minimal ones
    assert keys == [(1, 1), (1, 4), (1, 0), (2, 1)]
    assert x.shape == (6, 4)
    torch.testing.assert_close(x[:, 1], torch.arange(1.0, 7.0) / 6)  # each column scaled to a maximum of 1
    torch.testing.assert_close(x[:, 0], acts[1][:, 1] / 4)
    assert (x[:, 3] == 0).all()

    x, keys = design_matrix(features, minimal, max_features=10)
    assert keys == [(1, 1), (1, 4), (1, 0), (2, 2), (1, 3), (2, 0), (2, 1)]
    assert x.amax(0).tolist() == [1, 1, 1, 1, 1, 1, 0]
