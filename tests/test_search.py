"""The greedy minimal-set search on a scripted evaluator, and batched against sequential evaluation."""

import torch
from conftest import PROMPTS
from sae_factory import make_sae

from refusal_lens.interventions import FeatureIntervention, FeatureOp
from refusal_lens.pipeline.search import (Checkpointer, SetEvaluator, combine_seeds, greedy_minimal_sets,
                                          make_tracks, run_greedy, track_from_json)
from refusal_lens.prefix_cache import build_prefix_cache
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores


class ScriptedEvaluator:
    """Refusal is on unless every 'necessary' feature is ablated; others barely matter."""

    def __init__(self, necessary_by_prompt):
        self.necessary = necessary_by_prompt
        self.calls = 0

    def __call__(self, pairs):
        self.calls += 1
        scores = []
        for prompt, features in pairs:
            missing = len(set(self.necessary[prompt]) - set(map(tuple, features)))
            scores.append(2.0 * missing - 1.0 + 0.001 * len(features))
        scores = torch.tensor(scores)
        return scores, torch.sigmoid(scores)


CANDIDATES = [(layer, i) for layer in (1, 2) for i in range(12)]


def test_greedy_recovers_the_necessary_features_for_every_seed():
    necessary = {0: [(1, 3), (2, 7)], 1: [(1, 3), (1, 4), (2, 11)]}
    tracks = make_tracks(2, CANDIDATES, seeds=[0, 1, 2], per_prompt=True, shared=True, shared_flip_fraction=1.0)
    run_greedy(ScriptedEvaluator(necessary), tracks, block_size=5, tau=0.5)
    by_name = {t.name: t for t in tracks}
    for seed in (0, 1, 2):
        assert sorted(by_name[f"prompt0/seed{seed}"].current) == necessary[0]
        assert sorted(by_name[f"prompt1/seed{seed}"].current) == necessary[1]
        assert sorted(by_name[f"shared/seed{seed}"].current) == sorted(set(necessary[0]) | set(necessary[1]))
        assert all(t.status == "done" for t in tracks)


def test_checkpoints_after_the_first_step_then_every_interval_and_after_the_last():
    class Out:
        def __init__(self):
            self.saves = []

        def save_json(self, name, payload, **options):  # options: how the JSON is laid out
            self.saves.append((name, payload))

    necessary = {0: [(1, 3), (2, 7)], 1: [(1, 3), (1, 4), (2, 11)]}
    tracks = make_tracks(2, CANDIDATES, seeds=[0], per_prompt=True, shared=True, shared_flip_fraction=1.0)
    out, now, steps = Out(), [0.0], []

    def on_step(ts):
        steps.append(sum(t.steps for t in ts))
        checkpoint(ts)
        now[0] += 1.0  # each step takes a second

    checkpoint = Checkpointer(out, every_s=4.0, clock=lambda: now[0])
    run_greedy(ScriptedEvaluator(necessary), tracks, block_size=5, tau=0.5, on_step=on_step)
    saved_steps = [sum(t["steps"] for t in payload) for _, payload in out.saves]
    assert len(steps) > 9 and {name for name, _ in out.saves} == {"checkpoint.json"}
    assert saved_steps[0] == steps[0] and saved_steps[1] == steps[4] and saved_steps[-1] == steps[-1]
    assert len(out.saves) == 2 + (len(steps) - 2) // 4  # every fourth step between the first and the last
    final = [track_from_json(t) for t in out.saves[-1][1]]
    assert [t.current for t in final] == [t.current for t in tracks] and not any(t.queue for t in final)


def test_not_flippable_is_reported():
    necessary = {0: [(5, 5)]}   # not among the candidates
    tracks = make_tracks(1, CANDIDATES, seeds=[0], per_prompt=True, shared=False, shared_flip_fraction=1.0)
    run_greedy(ScriptedEvaluator(necessary), tracks, block_size=5, tau=0.5)
    assert tracks[0].status == "not_flippable"


def test_combine_seeds():
    inter, union = combine_seeds([[(1, 2), (1, 3)], [(1, 3), (2, 0)]])
    assert inter == [(1, 3)] and union == [(1, 2), (1, 3), (2, 0)]


def test_batched_pair_scores_equal_one_by_one(llama):
    saes = SAESet.from_saes({L: make_sae("jumprelu", llama.d_model, seed=L, layer=L) for L in (1, 3)})
    cache = build_prefix_cache(llama, PROMPTS, start=1)
    pairs = [(0, [(1, 2), (3, 4)]), (2, []), (1, [(3, 1)]), (0, [(1, 5), (1, 6), (3, 7)])]
    scores, _ = SetEvaluator(llama, saes, cache, FeatureOp("zero"), rows_per_forward=3)(pairs)
    for (prompt, features), batched in zip(pairs, scores):
        interventions = [FeatureIntervention(saes, features)] if features else []
        alone = refusal_scores(llama, [PROMPTS[prompt]], interventions=interventions)[0]
        torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def test_search_on_a_real_model_runs_end_to_end(llama):
    saes = SAESet.from_saes({L: make_sae("jumprelu", llama.d_model, seed=L, layer=L) for L in (1, 3)})
    candidates = [(1, i) for i in range(10)] + [(3, i) for i in range(10)]
    outcome = greedy_minimal_sets(llama, saes, PROMPTS[:2], candidates, seeds=[0, 1], rows_per_forward=8)
    assert outcome.forward_passes > 0 and len(outcome.tracks) == 6
    assert all(t.status in ("done", "not_flippable") for t in outcome.tracks)
