"""The dormant-feature analysis finds a planted dormant feature, sees it wake up, and tells whether
the jailbreak needs it; independently of the sets, it finds every SAE feature that wakes up once a
set's active members are ablated, and the stage says why there is no dormant member (METHOD.md §4)."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import PROMPTS, tiny_llama
from sae_factory import make_sae

from refusal_lens.activations import read_features
from refusal_lens.interventions import FeatureIntervention
from refusal_lens.interventions.files import save_direction
from refusal_lens.pipeline import dormant
from refusal_lens.pipeline.candidates import Candidate, Candidates
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.direction import DIRECTION_FILE
from refusal_lens.pipeline.dormant import (DormantCount, SetsAnalysis, WakeTest, WokenFeatures, WokenLayer,
                                           analyse_dormant, why_no_dormant, woken_features)
from refusal_lens.pipeline.prompt_sets import PromptSets, ScoredPrompt
from refusal_lens.pipeline.search import GreedyLoopCost, MinimalSets, PromptMinimalSet, SeedCombination
from refusal_lens.pipeline.stage import Inputs, RunContext, StageRun
from refusal_lens.saes import SAESet
from scripts.report_browser import python_reprs

ACTIVE = (1, 3)    # fires everywhere; writes along r (a decoder row of active_writes * r)
DORMANT = (2, 5)   # reads +r, biased to stay off unless ACTIVE's ablation adds PUSH * r to the stream
ALWAYS = (2, 0)    # fires everywhere, writes nothing
CAKE = (1, 6)      # fires on the token " cake" only (PROMPTS[0] has it, PROMPTS[1] not), writes nothing
MINIMAL = [list(ACTIVE), list(DORMANT), list(ALWAYS)]
PUSH = 10.0        # the residual stream of the tiny model has a norm of about 0.2
REFUSAL_GAIN = 2.0  # the refusal token's logit rises by this times the normalized stream's r component (~8)


def unit_direction(d_model: int) -> torch.Tensor:
    r = torch.randn(d_model, generator=torch.Generator().manual_seed(7))
    return r / r.norm()


def cake_embedding(chat) -> torch.Tensor:
    (token,) = chat.tokenizer(" cake", add_special_tokens=False)["input_ids"]
    return chat.model.model.embed_tokens.weight[token]


@pytest.fixture(scope="module")
def model():
    """A tiny Llama of its own (weights edited): refuses when the stream points along r, and the
    embedding of " cake" is ten times longer, so that a feature reading it stands out."""
    chat = tiny_llama(seed=1)
    with torch.no_grad():
        chat.model.lm_head.weight[chat.refusal_token_ids[0]] += REFUSAL_GAIN * unit_direction(chat.d_model)
        cake_embedding(chat).mul_(10)
    return chat


def planted_saes(chat, active_writes: float, dormant_writes: float) -> SAESet:
    """SAEs at layers 1 and 2 whose minimal-set features are set by hand (the others stay random).

    Zero-ablating ACTIVE at layer 1 adds ``-active_writes * r`` to the stream; DORMANT at layer 2
    reads r with a bias of -PUSH/2, so it wakes up (to about PUSH/2) when ``active_writes`` is
    -PUSH and stays off when it is +PUSH. Ablating the woken DORMANT adds ``-PUSH/2 * dormant_writes * r``.
    CAKE reads the embedding of " cake" with a bias of half its length.
    """
    d_model = chat.d_model
    r = unit_direction(d_model)
    cake = cake_embedding(chat).detach()
    saes = {L: make_sae("jumprelu", d_model, d_sae=8, layer=L, seed=L) for L in (1, 2)}
    with torch.no_grad():
        for sae in saes.values():
            sae.b_dec.zero_()
        for (layer, i), reads, bias, writes in [(ACTIVE, 0 * r, 1.0, active_writes * r),
                                                (DORMANT, r, -PUSH / 2, dormant_writes * r),
                                                (ALWAYS, 0 * r, 1.0, 0 * r),
                                                (CAKE, cake / cake.norm(), -cake.norm() / 2, 0 * r)]:
            sae = saes[layer]
            sae.W_enc[:, i], sae.b_enc[i], sae.threshold[i], sae.W_dec[i] = reads, bias, 0.0, writes
    return SAESet.from_saes(saes)


def test_a_dormant_feature_that_wakes_up_and_that_the_jailbreak_needs(model):
    # ablating ACTIVE (and ALWAYS) pushes the stream along r: the model refuses, and DORMANT wakes up;
    # ablating the woken DORMANT too pushes the stream back past zero, to -PUSH * r: no refusal.
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, MINIMAL, PROMPTS[:2], ["p0", "p1"])
    assert result["n_features"] == 3
    assert result["dormant_on_every_prompt"] == [list(DORMANT)]
    assert result["mean_dormant_per_prompt"] == 1.0
    for record in result["per_prompt"].values():
        assert record["dormant"] == [list(DORMANT)] and (record["n_dormant"], record["n_active"]) == (1, 2)
        assert record["woke_up"] == [list(DORMANT)]
        assert record["score_full_set"] < -5 and record["score_without_dormant"] > 5
        assert record["jailbreak_fails_without_dormant"] is True
    assert result["fraction_jailbreak_fails_without_dormant"] == 1.0 and result["mean_woke_up"] == 1.0


def test_the_full_set_does_not_jailbreak(model):
    # DORMANT wakes up but writes nothing: with or without it, the stream points along r and the model refuses
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=0.0)
    result = analyse_dormant(model, saes, MINIMAL, PROMPTS[:1], ["p0"])
    record = result["per_prompt"]["p0"]
    assert record["woke_up"] == [list(DORMANT)]
    assert record["score_full_set"] > 5 and record["score_without_dormant"] > 5
    assert record["jailbreak_fails_without_dormant"] is False
    assert result["fraction_jailbreak_fails_without_dormant"] == 0.0


def test_a_dormant_feature_that_stays_asleep_and_is_not_needed(model):
    # ablating ACTIVE pushes the stream against r: DORMANT stays off and the model complies either way
    saes = planted_saes(model, active_writes=PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, MINIMAL, PROMPTS[:1], ["p0"])
    record = result["per_prompt"]["p0"]
    assert record["dormant"] == [list(DORMANT)] and record["woke_up"] == []
    assert record["score_full_set"] < -5 and record["score_without_dormant"] < -5
    assert record["jailbreak_fails_without_dormant"] is False
    assert result["mean_woke_up"] == 0.0


def test_a_feature_dormant_on_some_prompts_only(model):
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, [list(ACTIVE), list(ALWAYS), list(CAKE)], PROMPTS[:2], ["cake", "poem"])
    assert result["dormant_on_every_prompt"] == [] and result["mean_dormant_per_prompt"] == 0.5
    cake, poem = result["per_prompt"]["cake"], result["per_prompt"]["poem"]
    assert (cake["n_dormant"], cake["n_active"]) == (0, 3) and "woke_up" not in cake
    assert poem["dormant"] == [list(CAKE)] and poem["woke_up"] == []
    assert result["fraction_jailbreak_fails_without_dormant"] == 0.0 and result["mean_woke_up"] == 0.0


def test_no_dormant_features(model):
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, [list(ACTIVE), list(ALWAYS)], PROMPTS[:2], ["p0", "p1"])
    assert result["dormant_on_every_prompt"] == [] and result["mean_dormant_per_prompt"] == 0.0
    for record in result["per_prompt"].values():
        assert (record["n_dormant"], record["n_active"]) == (0, 2) and "woke_up" not in record
    assert result["fraction_jailbreak_fails_without_dormant"] is None and result["mean_woke_up"] is None
    assert analyse_dormant(model, saes, [], PROMPTS[:1], ["p0"]) == {"n_features": 0, "per_prompt": {}}


# --- every SAE feature that wakes up (independently of the sets) ------------------------------
def test_ablating_a_feature_wakes_up_a_downstream_one(model):
    # DORMANT (layer 2) is in no set: ablating ACTIVE (layer 1) alone must find it woken, on each prompt
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    tests = [WakeTest(PROMPTS[0], (ACTIVE,)), WakeTest(PROMPTS[1], (ACTIVE,)),
             WakeTest(PROMPTS[0], (ALWAYS,))]  # a row of the same batch ablating at the top SAE layer only
    found = woken_features(model, saes, tests)
    for woke in found[:2]:
        assert woke[DORMANT] > PUSH / 4 and all(layer == 2 for layer, _ in woke)  # layer 1 is read before the edit
    assert found[2] == {}  # nothing above layer 2: nothing can change
    assert woken_features(model, saes, tests, batch_size=1) == found  # rows stay paired with their own sets
    # reference: two separate reads of every feature at layer 2, clean and with ACTIVE ablated
    for woke, text in zip(found[:2], PROMPTS[:2]):
        clean = read_features(model, saes, [text], all_active=[2], reduce="max")
        edited = read_features(model, saes, [text], all_active=[2], reduce="max",
                               interventions=[FeatureIntervention(saes, [ACTIVE])])
        expected = {key: edited.column(key)[0].item() for key in edited.keys
                    if clean.column(key)[0].item() <= 0 < edited.column(key)[0].item()}
        assert woke.keys() == expected.keys()
        assert all(abs(woke[k] - expected[k]) < 1e-4 for k in expected)
    strict = woken_features(model, saes, tests[:1], threshold=PUSH / 4)
    assert strict == [{DORMANT: found[0][DORMANT]}]  # the threshold drops the slightly woken random features


def test_nothing_wakes_up_when_the_ablated_feature_writes_nothing(model):
    saes = planted_saes(model, active_writes=0.0, dormant_writes=4.0)
    assert woken_features(model, saes, [WakeTest(p, (ACTIVE,)) for p in PROMPTS[:2]]) == [{}, {}]
    with pytest.raises(ValueError, match="at least one feature"):
        woken_features(model, saes, [WakeTest(PROMPTS[0], ())])


# --- the stage --------------------------------------------------------------------------------
def stage_run(tmp_path, chat, saes, shared, own, candidates, **dormant):
    """The dormant stage's context and inputs on the planted model: search prompts PROMPTS[:2], the
    given shared set and per-prompt sets, candidates, and the direction -r (for the search sweep)."""
    config = RunConfig.model_validate({"search": {"seeds": [0]}, "candidates": {"top_k": 2}, "dormant": dormant})
    ctx = RunContext(config, tmp_path / "run")
    ctx.__dict__.update(chat_model=chat, saes=saes)  # cached properties, set instead of loaded
    prompts = [ScoredPrompt(id=f"p{i}", text=t, category=None, split="train", score=1.0)
               for i, t in enumerate(PROMPTS[:2])]
    prompt_sets = PromptSets(**{name: [] for name in PromptSets.model_fields} | {"harmful_search": prompts})
    search = MinimalSets(
        shared=SeedCombination(intersection=shared, union=shared, by_seed={0: shared}),
        per_prompt={pid: PromptMinimalSet(intersection=s, union=s, by_seed={0: s}, flippable=True)
                    for pid, s in own.items()},
        not_flippable=[], tracks=[], greedy_loop=GreedyLoopCost(forward_passes=0, rows=0, wall_time_s=0.0))
    direction = ctx.store.stage("direction", {}, [])
    save_direction(direction.path / DIRECTION_FILE, -unit_direction(chat.d_model), 1)
    runs = {"prompt_sets": prompt_sets, "search": search, "direction": None,
            "candidates": Candidates(features=[Candidate(layer=L, feature=i, cosine=0.5) for L, i in candidates])}
    inputs = Inputs({name: StageRun(SimpleNamespace(name=name), direction if name == "direction" else
                                    ctx.store.stage(name, {}, []), result) for name, result in runs.items()})
    return ctx, inputs, ctx.store.stage("dormant", {"test": True}, [])


def render(result, inputs, tmp_path) -> str:
    html = "".join(s.html for s in dormant.report(result, inputs, tmp_path / "figures"))
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    assert "<img" in html and "None" not in text and "nan" not in text.lower(), text
    assert python_reprs(html) == []
    return text


def test_the_stage_counts_woken_features_and_says_why_no_member_is_dormant(model, tmp_path):
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    ctx, inputs, out = stage_run(tmp_path, model, saes, shared=[ACTIVE, ALWAYS], own={"p0": [ACTIVE]},
                                 candidates=[ACTIVE, ALWAYS, (1, 0), (2, 1)], wake_threshold=PUSH / 4)
    result = dormant.compute(ctx, inputs, out)
    assert dormant.DormantAnalysis.model_validate(json.loads(json.dumps(result.model_dump(mode="json")))) == result
    assert [a.name for a in result.analyses] == ["shared", "per_prompt"] and result.sae_layers == {1: 8, 2: 8}
    shared, own = result.analyses
    assert (shared.count.n_sets, shared.count.n_members, shared.count.n_dormant) == (2, 4, 0)
    assert (own.count.n_sets, own.count.n_members, own.count.n_dormant) == (1, 1, 0)
    for analysis, n_prompts in ((shared, 2), (own, 1)):
        woken = analysis.woken
        assert woken.n_prompts == n_prompts and woken.lowest_ablated_layer == 1
        assert [(w.layer, w.n_features, w.can_wake, w.n_woken) for w in woken.per_layer] == [(1, 8, False, 0),
                                                                                              (2, 8, True, 1)]
        assert [(f.layer, f.feature, f.n_prompts, f.candidate, f.member) for f in woken.top] == \
            [(*DORMANT, n_prompts, False, False)]
        assert woken.top[0].mean_activation > PUSH / 4 and woken.n_woken_candidates == 0
    text = render(result, inputs, tmp_path)
    assert "No dormant feature." in text and "none is among the 4 candidates" in text
    assert "on 2 prompts woke up 1 distinct SAE feature (1.0 per prompt on average; 1 of 8 at layer 2)" in text
    assert "Layer 1 lies at or below the lowest ablated layer (1)" in text
    assert any("woke up" in line for line in dormant.summary(result))


def test_a_set_at_the_top_sae_layer_has_nothing_to_wake_up(model, tmp_path):
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    ctx, inputs, out = stage_run(tmp_path, model, saes, shared=[ALWAYS], own={}, candidates=[ALWAYS])
    result = dormant.compute(ctx, inputs, out)
    shared, own = result.analyses
    assert shared.woken.n_woken == 0 and not any(w.can_wake for w in shared.woken.per_layer)
    assert own.count.n_sets == 0 and own.woken.n_prompts == 0
    text = render(result, inputs, tmp_path)
    assert "no SAE layer lies above it (SAE layers: 1, 2)" in text and "too few SAE layers" in text
    assert "per-prompt sets: no set to analyse" in text


def test_the_per_prompt_search_at_a_larger_candidate_count(model, tmp_path):
    # the direction is -r: DORMANT's decoder row (+4r) ranks last at layer 2, so only the largest count
    # (every feature) makes it a candidate; the search then keeps it beside ACTIVE, dormant on the prompt
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    ctx, inputs, out = stage_run(tmp_path, model, saes, shared=[ACTIVE, ALWAYS], own={}, candidates=[ACTIVE, ALWAYS],
                                 search_top_k=[8, 4], search_prompts=1)
    result = dormant.compute(ctx, inputs, out)
    small, large = result.candidate_counts
    assert [(s.top_k, s.n_candidates, s.n_prompts) for s in (small, large)] == [(4, 8, 1), (8, 16, 1)]
    assert small.sets == {} and small.not_flippable == ["p0"]
    assert large.sets == {"p0": [ACTIVE, DORMANT]} and large.not_flippable == []
    record = large.per_prompt["p0"]
    assert record.dormant == [DORMANT] and record.woke_up == [DORMANT] and record.jailbreak_fails_without_dormant
    assert record == dormant.DormantOnPrompt.model_validate(
        analyse_dormant(model, saes, [ACTIVE, DORMANT], PROMPTS[:1], ["p0"])["per_prompt"]["p0"])
    swept = {a.name: a for a in result.analyses}
    assert swept["per_prompt_top_k4"].count.n_sets == 0
    counted = swept["per_prompt_top_k8"]
    assert (counted.n_candidates, counted.count.n_members, counted.count.n_dormant, counted.count.n_needed) == \
        (16, 2, 1, 1)
    assert DORMANT in {(f.layer, f.feature) for f in counted.woken.top if f.member and f.candidate}
    assert dormant.compute(ctx, inputs, out) == result  # the finished searches are kept and reused, the rest seeded
    assert (out.path / "search_top_k8.json").exists()
    text = render(result, inputs, tmp_path)
    assert "per-prompt sets, top 8" in text and "No dormant feature." not in text


def test_why_no_dormant_names_the_cause():
    def analysis(layers, lowest, n_woken=0, n_woken_candidates=0, n_dormant=0):
        per_layer = [WokenLayer(layer=L, n_features=100, can_wake=L > lowest, n_woken=n_woken if L > lowest else 0,
                                mean_per_prompt=1.0) for L in layers]
        woken = WokenFeatures(n_prompts=3, lowest_ablated_layer=lowest, per_layer=per_layer, n_woken=n_woken,
                              mean_per_prompt=1.0, n_woken_candidates=n_woken_candidates, n_woken_members=0, top=[])
        count = DormantCount(n_sets=3, n_members=12, n_dormant=n_dormant, n_prompts_with_dormant=min(n_dormant, 3),
                             n_needed=0)
        return SetsAnalysis(name="per_prompt", top_k=10, n_candidates=40, count=count, woken=woken)

    assert "too few SAE layers" in why_no_dormant(analysis([14, 18], 18), [14, 18])
    assert "woke up none of the 100 SAE features at layers 18" in why_no_dormant(analysis([14, 18], 14), [14, 18])
    assert "none is among the 40 candidates" in why_no_dormant(analysis([14, 18], 14, n_woken=5), [14, 18])
    assert "the greedy search dropped them" in why_no_dormant(analysis([14, 18], 14, 5, 2), [14, 18])
    assert why_no_dormant(analysis([14, 18], 14, 5, 2, n_dormant=1), [14, 18]) == ""
