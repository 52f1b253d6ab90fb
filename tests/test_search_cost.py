"""The cheap search: capability cost (harmless next-token KL) as an objective of the greedy test."""

import pytest
import torch
from conftest import PROMPTS
from sae_factory import make_sae

from refusal_lens.interventions import FeatureIntervention, FeatureOp, ScopedFeatureIntervention
from refusal_lens.pipeline.search import (
    HarmlessKL,
    SetEvaluator,
    _blocks,
    greedy_minimal_sets,
    make_tracks,
    minimal_sets,
    run_greedy,
    track_from_json,
)
from refusal_lens.prefix_cache import build_prefix_cache
from refusal_lens.saes import SAESet
from refusal_lens.scoring import last_position_logits
from refusal_lens.targeting import next_token_kl

CANDIDATES = [(layer, i) for layer in (1, 2) for i in range(12)]
NECESSARY = [(1, 3), (2, 7)]      # the flip needs both
HELPERS = {(1, 5): 2.0, (2, 2): 2.0}  # each lowers the refusal score a lot, neither is needed to flip
COST = {key: 0.0 for key in CANDIDATES} | {(1, 5): 0.5, (1, 3): 0.9, (2, 9): 0.2}  # (2, 2) is silent


def scripted_evaluate(pairs):
    scores = []
    for _, features in pairs:
        features = set(map(tuple, features))
        score = 5.0 * len(set(NECESSARY) - features) - 1.0 - sum(v for k, v in HELPERS.items() if k in features)
        scores.append(score + 0.001 * len(features))
    scores = torch.tensor(scores)
    return scores, torch.sigmoid(scores)


def scripted_kl(sets):
    return [sum(COST[tuple(f)] for f in s) for s in sets]


def test_cheap_tracks_drop_costly_features_the_flip_does_not_need():
    tracks = make_tracks(2, CANDIDATES, [0, 1], per_prompt=False, shared=True, shared_flip_fraction=1.0,
                         cheap_candidates=CANDIDATES)
    run_greedy(scripted_evaluate, tracks, block_size=5, tau=0.5, harmless_kl=scripted_kl, cost=COST)
    for track in tracks:
        assert track.status == "done"
        if track.cheap:  # the costly helper goes, the silent one stays (tau), the costly necessary one stays
            assert sorted(track.current) == [(1, 3), (2, 2), (2, 7)]
            assert track.kl == scripted_kl([track.current])[0]
        else:  # the paper's test keeps both helpers: removing either moves P(refusal) by more than tau
            assert sorted(track.current) == [(1, 3), (1, 5), (2, 2), (2, 7)] and track.kl is None


def test_cheap_blocks_try_the_costliest_first():
    blocks = _blocks(CANDIDATES, 5, seed=3, cost=COST)
    assert blocks[0][:3] == [(1, 3), (1, 5), (2, 9)]
    assert sorted(f for b in blocks for f in b) == sorted(CANDIDATES)
    assert blocks != _blocks(CANDIDATES, 5, seed=4, cost=COST)  # the seed still orders the ties


def test_cheap_track_survives_a_checkpoint():
    track = make_tracks(1, CANDIDATES, [0], per_prompt=False, shared=False, shared_flip_fraction=1.0,
                        cheap_candidates=CANDIDATES[:4])[0]
    track.kl = 0.25
    again = track_from_json(track.to_json())
    assert again.cheap and again.kl == 0.25 and again.current == CANDIDATES[:4]


def test_harmless_kl_of_sets_equals_full_forwards(llama):
    saes = SAESet.from_saes({L: make_sae("jumprelu", llama.d_model, seed=L, layer=L) for L in (1, 3)})
    cache = build_prefix_cache(llama, PROMPTS, start=1)
    kl = HarmlessKL(SetEvaluator(llama, saes, cache, FeatureOp("zero"), rows_per_forward=5))
    sets = [[(1, 2), (3, 4), (3, 9)], [], [(3, 1)]]
    base = last_position_logits(llama, PROMPTS)
    for got, features in zip(kl(sets), sets):
        edited = last_position_logits(llama, PROMPTS, [FeatureIntervention(saes, features)] if features else [])
        assert abs(got - next_token_kl(base, edited).mean().item()) < 1e-5


def test_cheap_search_on_a_real_model_reports_its_cost(llama):
    saes = SAESet.from_saes({L: make_sae("jumprelu", llama.d_model, seed=L, layer=L) for L in (1, 3)})
    candidates = [(1, i) for i in range(10)] + [(3, i) for i in range(10)]
    outcome = greedy_minimal_sets(llama, saes, PROMPTS[:2], candidates, seeds=[0], per_prompt=False,
                                  rows_per_forward=16, harmless=PROMPTS[2:], cheap=True, max_harmless_firing=0.9)
    result = minimal_sets(outcome, ["a", "b"])
    assert [t.name for t in outcome.tracks] == ["shared/seed0", "cheap/seed0"]
    cost = result.harmless_cost
    assert cost.n_prompts == 2 and len(cost.candidates) == len(candidates)
    assert cost.n_cheap_candidates == sum(c.firing_rate <= 0.9 for c in cost.candidates)
    assert result.cheap is not None
    for track in result.tracks:
        if track.status == "done":
            assert track.harmless_kl is not None and track.harmless_kl > -1e-6


def test_cheap_tracks_search_under_their_own_edit(llama):
    """Cheap tracks may search under another edit (post-instruction positions, clamp-multiply): the
    cost of a set is that edit's harmless KL, equal to full forwards; the search records the edit."""
    saes = SAESet.from_saes({L: make_sae("jumprelu", llama.d_model, seed=L, layer=L) for L in (1, 3)})
    op = FeatureOp("scale", -1.0)
    cache = build_prefix_cache(llama, PROMPTS, start=1)
    kl = HarmlessKL(SetEvaluator(llama, saes, cache, op, rows_per_forward=5, scope="post_instruction"))
    sets = [[(1, 2), (3, 4), (3, 9)], [(3, 1), (1, 7)]]
    base = last_position_logits(llama, PROMPTS)
    for got, features in zip(kl(sets), sets):
        edited = last_position_logits(llama, PROMPTS, [ScopedFeatureIntervention(saes, features, op,
                                                                                 scope="post_instruction")])
        everywhere = last_position_logits(llama, PROMPTS, [FeatureIntervention(saes, features, op)])
        assert got > 1e-4 and abs(got - next_token_kl(base, edited).mean().item()) < 1e-5
        assert abs(got - next_token_kl(base, everywhere).mean().item()) > 1e-4  # the scope is not ignored
    candidates = [(1, i) for i in range(10)] + [(3, i) for i in range(10)]
    outcome = greedy_minimal_sets(llama, saes, PROMPTS[:2], candidates, seeds=[0], per_prompt=False, shared=False,
                                  rows_per_forward=16, harmless=PROMPTS[2:], cheap=True, cheap_op=op,
                                  cheap_scope="post_instruction")
    result = minimal_sets(outcome, ["a", "b"], "post_instruction", -1.0)
    assert [t.name for t in outcome.tracks] == ["cheap/seed0"]
    assert result.harmless_cost.positions == "post_instruction" and result.harmless_cost.scale == -1.0
    edit = result.harmless_cost.edit(saes, [(1, 2)])
    assert isinstance(edit, ScopedFeatureIntervention) and edit.scope == "post_instruction" and edit.op == op


def test_each_step_scores_the_cheap_tracks_under_their_edit_and_the_others_under_the_papers():
    calls = {"paper": [], "cheap": []}

    def recording(kind):
        def evaluate(pairs):
            calls[kind].append(len(pairs))
            return scripted_evaluate(pairs)
        return evaluate

    tracks = make_tracks(2, CANDIDATES, [0, 1], per_prompt=False, shared=True, shared_flip_fraction=1.0,
                         cheap_candidates=CANDIDATES)
    alone = make_tracks(2, CANDIDATES, [0, 1], per_prompt=False, shared=True, shared_flip_fraction=1.0,
                        cheap_candidates=CANDIDATES)
    run_greedy(recording("paper"), tracks, block_size=5, tau=0.5, harmless_kl=scripted_kl, cost=COST,
               cheap_evaluate=recording("cheap"))
    run_greedy(scripted_evaluate, alone, block_size=5, tau=0.5, harmless_kl=scripted_kl, cost=COST)
    assert [t.current for t in tracks] == [t.current for t in alone]  # the same scores: the same sets
    assert calls["paper"] and calls["cheap"]
    assert sum(calls["paper"]) == 2 * sum(t.steps + 1 for t in tracks if not t.cheap)  # 2 prompts a test
    assert sum(calls["cheap"]) == 2 * sum(t.steps + 1 for t in tracks if t.cheap)


def test_a_search_refuses_a_generated_only_edit(llama):
    saes = SAESet.from_saes({1: make_sae("jumprelu", llama.d_model, seed=1, layer=1)})
    cache = build_prefix_cache(llama, PROMPTS, start=1)
    with pytest.raises(ValueError, match="generated-only edit never touches"):
        SetEvaluator(llama, saes, cache, FeatureOp("zero"), scope="generated")


def test_minimal_cheap_file_reproduces_the_edit_the_cheap_tracks_searched_under(tmp_path):
    """The exported `minimal_cheap` file is the edit the evaluation applies (``HarmlessCost.edit``)."""
    from types import SimpleNamespace

    from refusal_lens.interventions.files import load_feature_set, save_feature_set
    from refusal_lens.interventions.parse import feature_intervention
    from refusal_lens.pipeline.search import SearchOutcome, export
    from refusal_lens.pipeline.targeted import scale_op
    from refusal_lens.targeting import HarmlessActivity

    saes = SAESet.from_saes({L: make_sae("jumprelu", 64, seed=L, layer=L) for L in (1, 2)})
    (track,) = make_tracks(2, CANDIDATES, [0], per_prompt=False, shared=False, shared_flip_fraction=1.0,
                           cheap_candidates=NECESSARY)
    track.status = "done"
    activity = HarmlessActivity(list(CANDIDATES), torch.zeros(len(CANDIDATES)), torch.zeros(len(CANDIDATES)))
    outcome = SearchOutcome([track], 1, 2, 0.0, activity, {track.name: 0.5}, 2, len(NECESSARY))
    for positions, scale in (("post_instruction", -2.0), ("all", 0.0)):
        result = minimal_sets(outcome, ["a", "b"], positions, scale)
        written = {}
        ctx = SimpleNamespace(export_feature_set=lambda name, features, op=FeatureOp("zero"), **fields:
                              written.update({name: save_feature_set(tmp_path / f"{name}.json", features, saes="x",
                                                                     op=op, **fields)}))
        export(ctx, result, None)
        from_file = feature_intervention(saes, load_feature_set(written["minimal_cheap"]))
        edit = result.harmless_cost.edit(saes, result.minimal_cheap())
        assert type(from_file) is type(edit) and from_file.describe() == edit.describe()
        assert edit.op == scale_op(scale) and getattr(edit, "scope", "all") == positions
    assert not isinstance(edit, ScopedFeatureIntervention)  # the default edit is the plain one, as before
