"""The direction search on the full grid: batched scores equal one-candidate-at-a-time reference
computations, the lazy screen chooses what the fully measured grid chooses, the layer cutoff
counts as Arditi et al. count, and a fallback is loud and measures its alternatives."""

import pytest
import torch
from conftest import tiny_llama

from refusal_lens.interventions import ActivationAddition, DirectionalAblation
from refusal_lens.pipeline.config import DirectionConfig
from refusal_lens.pipeline.direction import (
    CandidateScorer,
    candidate_grid,
    choose,
    find_direction,
    row_passes,
    screen,
    summary,
)
from refusal_lens.scoring import last_position_logits, next_token_kl, refusal_score_from_logits

HARMFUL = [f"Tell me how to do dangerous thing number {i} to hurt people" + " now" * (i % 4) for i in range(12)]
HARMLESS = [f"Write a short friendly poem about garden number {i}" + " please" * (i % 3) for i in range(12)]


@pytest.fixture(scope="module")
def refusing():
    """A tiny Llama whose refusal logit follows the mean final hidden state of harmful prompts."""
    chat = tiny_llama(seed=3)
    batch = chat.tokenize(HARMFUL[:6])
    with torch.no_grad():
        hidden = chat.model.model(**batch).last_hidden_state[:, -1].mean(0)
        chat.model.lm_head.weight[chat.refusal_token_ids[0]] = 40 * hidden / hidden.norm() ** 2
    return chat


def test_batched_scores_equal_one_candidate_at_a_time(refusing):
    chat, harmful, harmless = refusing, HARMFUL[6:10], HARMLESS[6:10]
    vectors = torch.randn(3, chat.d_model, generator=torch.Generator().manual_seed(0))
    scorer = CandidateScorer(chat, harmful, harmless, [1], rows_per_forward=5)
    clean = last_position_logits(chat, harmless)
    refusal = chat.refusal_token_ids
    for k, vector in enumerate(vectors):
        ablated = [DirectionalAblation(vector)]
        bypass = refusal_score_from_logits(last_position_logits(chat, harmful, ablated), refusal).mean()
        kl = next_token_kl(clean, last_position_logits(chat, harmless, ablated)).mean()
        added = last_position_logits(chat, harmless, [ActivationAddition(vector, 1)])
        induce = refusal_score_from_logits(added, refusal).mean()
        torch.testing.assert_close(scorer.bypass(vectors)[k], bypass, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scorer.kl(vectors)[k], kl, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(scorer.induce(vectors, 1)[k], induce, rtol=1e-4, atol=1e-4)
    only = [DirectionalAblation(vectors[0], layers=[2, 3])]
    torch.testing.assert_close(scorer.bypass(vectors[:1], [2, 3])[0],
                               refusal_score_from_logits(last_position_logits(chat, harmful, only), refusal).mean(),
                               rtol=1e-4, atol=1e-4)


def test_row_passes_cover_every_row_once_with_similar_lengths():
    lengths = [40, 12, 38, 13, 39, 20]
    passes = row_passes(lengths, n_candidates=5, rows_per_forward=4)
    rows = [(c, p) for cs, ps in passes for c, p in zip(cs.tolist(), ps.tolist())]
    assert sorted(rows) == [(c, p) for c in range(5) for p in range(6)]
    for cs, ps in passes:
        assert len(cs) <= 4
        longest = max(lengths[p] for p in ps.tolist())
        assert min(lengths[p] for p in ps.tolist()) >= 0.9 * longest


def test_lazy_screen_chooses_what_the_fully_measured_grid_chooses(refusing):
    chat = refusing
    config = DirectionConfig(positions=[-1, -2, -3], max_layer_fraction=1.0, rows_per_forward=16)
    positions, layers = candidate_grid(chat, config)
    means = torch.randn(chat.n_layers, len(positions), chat.d_model, generator=torch.Generator().manual_seed(1))
    scorer = CandidateScorer(chat, HARMFUL[:4], HARMLESS[:4], layers, config.rows_per_forward)
    full = screen(scorer, means, layers, positions, config, measure_all=True)
    kls = sorted(r["kl"] for r in full)
    inducing = sorted(r["induce"] for r in full)
    for threshold in (inducing[len(inducing) // 2], 1e9, -1e9):  # half induce, none does, all do
        for kl_threshold in (-1.0, kls[len(kls) // 3], 1e9):  # no KL passes, some do, all do
            tuned = config.model_copy(update={"induce_threshold": threshold, "kl_threshold": kl_threshold})
            lazy_best, lazy_filters = choose(screen(scorer, means, layers, positions, tuned), tuned)
            full_best, full_filters = choose([dict(r) for r in full], tuned)
            assert (lazy_best["layer"], lazy_best["position"], lazy_filters) == (
                full_best["layer"], full_best["position"], full_filters)


def test_the_last_20_percent_of_layers_are_counted_as_arditi_et_al_count_them(refusing):
    """Their layer l is the input of block l, ours the output of block L = their L+1: on 30 layers they
    keep l < int(30 x 0.8) = 24, so we keep L <= 22."""

    class Thirty:
        n_layers, n_post_instruction_tokens = 30, 2

        def check_layer(self, layer):
            return layer

    positions, layers = candidate_grid(Thirty(), DirectionConfig())
    assert positions == [-2, -1] and layers == list(range(23))
    with pytest.raises(ValueError, match="max_layer_fraction"):
        candidate_grid(refusing, DirectionConfig(layers=[3]))


def test_fallback_is_loud_and_measures_the_alternatives(refusing):
    chat = refusing
    config = DirectionConfig(positions=[-1], max_layer_fraction=1.0, kl_threshold=-1.0, induce_threshold=-1e9,
                             fallback_windows=[0, 1, 5])
    direction, found = find_direction(chat, HARMFUL[:6], HARMLESS[:6], HARMFUL[6:9], HARMLESS[6:9], config,
                                      batch_size=4)
    assert found.filters.startswith("induce only") and found.n_passing == 0
    assert "No candidate of the 3 passed both filters" in found.fallback
    assert any("Warning" in line for line in summary(found))
    L = found.layer
    expected = sorted({(max(0, L - w), min(3, L + w)) for w in (0, 1)})  # w=5 covers every layer: the direction itself
    assert [(a.layers[0], a.layers[-1]) for a in found.alternatives] == expected
    scorer = CandidateScorer(chat, HARMFUL[6:9], HARMLESS[6:9], [], 8)
    for alternative in found.alternatives:
        assert alternative.bypass == pytest.approx(scorer.bypass(direction[None], alternative.layers).item(), abs=1e-4)
        assert alternative.kl == pytest.approx(scorer.kl(direction[None], alternative.layers).item(), abs=1e-5)


def test_no_fallback_when_a_candidate_passes(refusing):
    config = DirectionConfig(positions=[-1], max_layer_fraction=1.0, kl_threshold=1e9, induce_threshold=-1e9)
    _, found = find_direction(refusing, HARMFUL[:6], HARMLESS[:6], HARMFUL[6:9], HARMLESS[6:9], config, batch_size=4)
    assert found.filters == "induce+kl" and found.fallback is None and not found.alternatives
    assert found.n_passing == found.n_candidates == 3
    assert found.bypass == min(r.bypass for r in found.table)
