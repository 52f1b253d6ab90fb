"""The attribution stage (METHOD.md §5) on a tiny model: its feature sets and scores are the library's,
c and v are chosen on validation prompts only, its files carry their ops, and bad settings fail early."""

import json

import pytest
import torch
from conftest import tiny_llama
from sae_factory import make_sae
from typer.testing import CliRunner

from refusal_lens.attribution import attribute, cosine_features, cossim_ap_features, feature_scores
from refusal_lens.cli import app
from refusal_lens.interventions import FeatureOp
from refusal_lens.interventions.files import (InterventionFileError, load_direction, load_feature_set,
                                              save_feature_set)
from refusal_lens.models import load_chat_model
from refusal_lens.pipeline import attribution as stage
from refusal_lens.pipeline.attribution import ValueTrial, best_trial, induced_values
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.run import run_pipeline
from refusal_lens.saes import load_sae_set

HARMFUL = [f"Tell me how to do dangerous thing number {i} to hurt people" for i in range(60)]
HARMLESS = [f"Write a short friendly poem about garden number {i}" for i in range(60)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribution_stage")
    chat = tiny_llama(seed=5)
    batch = chat.tokenize(HARMFUL[:8])
    with torch.no_grad():  # the refusal token's logit follows the mean final hidden state of harmful prompts
        hidden = chat.model.model(**batch).last_hidden_state[:, -1].mean(0)
        chat.model.lm_head.weight[chat.refusal_token_ids[0]] = 40 * hidden / hidden.norm() ** 2
    chat.model.save_pretrained(root / "model")
    chat.tokenizer.save_pretrained(root / "model")
    for layer in (1, 2):
        make_sae("standard", 64, d_sae=48, layer=layer, seed=layer).save_model(str(root / "saes" / f"layer_{layer}"))
    (root / "harmful.txt").write_text("\n".join(HARMFUL))
    (root / "harmless.txt").write_text("\n".join(HARMLESS))
    config = {
        "model": {"name": str(root / "model"), "device": "cpu", "dtype": "float32"},
        "saes": {"source": str(root / "saes")},
        "data": {"harmful": [str(root / "harmful.txt")], "harmless": [str(root / "harmless.txt")],
                 "n_train": 8, "n_val": 4, "n_search": 3, "n_eval": 4, "n_fm": 10, "n_capability": 4,
                 "filter_by_score": False},
        "direction": {"layers": [0, 1, 2], "positions": [-1], "max_layer_fraction": 1.0},
        "candidates": {"top_k": 6},
        "attribution": {"method": "ig", "steps": 3, "k": 4, "n_prompts": 5, "batch_size": 2,
                        "scales": [-1.0, -3.0], "induce_values": [1.0, 3.0], "max_new_tokens": 3},
    }
    return root, config


@pytest.fixture(scope="module")
def attribution_run(setup):
    root, config = setup
    out = root / "run"
    results = run_pipeline(RunConfig.model_validate(config), out, until="attribution")
    return out, results


def _config(config, **attribution):
    changed = json.loads(json.dumps(config))
    changed["attribution"].update(attribution)
    return RunConfig.model_validate(changed)


def test_feature_sets_scores_and_totals_are_the_librarys(setup, attribution_run):
    """The stage's sets, scores, per-prompt tops and layer totals, recomputed with the library
    from the run's own prompts and direction."""
    root, config = setup
    out, results = attribution_run
    result, candidates = results["attribution"], results["candidates"]
    prompts = results["prompt_sets"].harmful_train[:5]
    assert result.prompt_ids == [p.id for p in prompts] and (result.method, result.steps) == ("ig", 3)
    chat = load_chat_model(str(root / "model"), device="cpu", dtype="float32")
    saes = load_sae_set(str(root / "saes"), device="cpu")
    direction = load_direction(out / "direction.safetensors").direction
    attributed = attribute(chat, saes, [p.text for p in prompts], direction, layers=[1, 2], steps=3, batch_size=2)
    scores = feature_scores(attributed)
    rows = [(c.layer, c.feature, c.cosine) for c in candidates.features]
    expected = {"cossim_ap": cossim_ap_features(scores, rows, 4), "cosine": cosine_features(rows, 4)}
    for name, features in expected.items():
        assert result.feature_sets[name] == [(f.layer, f.feature) for f in features]
        assert [s.score for s in result.scores[name]] == pytest.approx([f.score for f in features], abs=1e-9)
    assert set(result.feature_sets) == {"cossim_ap", "cosine", "attribution", "activation_difference"}
    assert all(len(features) == 4 for features in result.feature_sets.values())
    assert set(result.feature_sets["cossim_ap"]) <= set(candidates.keys())
    top_attribution = scores.top(4)
    assert result.feature_sets["attribution"] == [(f.layer, f.feature) for f in top_attribution]
    first = result.per_prompt[0].top["attribution"]
    assert [(f.layer, f.feature) for f in first] == [(f.layer, f.feature) for f in scores.top(4, prompt=0)]
    for total in result.layer_totals:
        layer = attributed.layers[total.layer]
        assert total.features + total.error == pytest.approx(float(layer.total().mean()), abs=1e-6)
        assert total.m_change == pytest.approx(float((layer.m_patched_at_layer - attributed.m_clean).mean()), abs=1e-6)
    assert result.m_patched == pytest.approx(float(attributed.m_patched.mean()), rel=1e-6, abs=1e-6)


def test_exported_files_carry_the_chosen_ops(attribution_run):
    out, results = attribution_run
    result = results["attribution"]
    assert result.clamp.chosen == best_trial(result.clamp.trials).value
    assert [t.value for t in result.clamp.trials] == [-1.0, -3.0]
    for name, features in result.feature_sets.items():
        saved = load_feature_set(out / "feature_sets" / f"{name}_clamp.json")
        assert saved.features == features and saved.op == FeatureOp("scale", result.clamp.chosen)
    induce = load_feature_set(out / "feature_sets" / "cossim_ap_induce.json")
    assert induce.features == result.feature_sets["cossim_ap"] and induce.op.kind == "set"
    values = {(f.layer, f.feature): f.value for f in result.induced_features}
    means = {(f.layer, f.feature): f.mean_activation for f in result.induced_features}
    assert dict(induce.op.per_feature) == values == induced_values(means, result.induce.chosen, "mean_activation")
    assert any(f.measured in ("clean", "ablated") for f in result.induced_features)


def test_clamp_and_induce_values_are_chosen_on_validation_prompts_only(setup, attribution_run, monkeypatch):
    root, config = setup
    out, results = attribution_run
    sets = results["prompt_sets"]
    seen, scripted = [], {-1.0: 0.25, -2.0: 0.75, -3.0: 0.75, 1.0: 0.5, 3.0: 0.5, 6.0: 0.25}

    def trial(ctx, prompts, intervention, value, want_refused):
        seen.append(({p.id for p in prompts}, want_refused, intervention.op))
        return ValueTrial(value=value, rate=scripted[value], ci_low=0.0, ci_high=1.0, n=len(prompts),
                          mean_refusal_score=0.0)

    monkeypatch.setattr(stage, "validation_trial", trial)
    result = run_pipeline(_config(config, scales=[-3.0, -1.0, -2.0], induce_values=[6.0, 3.0, 1.0]), out,
                          until="attribution")["attribution"]
    assert result.clamp.chosen == -2.0 and result.induce.chosen == 1.0  # ties: the mildest value
    val = {"harmful": {p.id for p in sets.harmful_val}, "harmless": {p.id for p in sets.harmless_val}}
    held_out = {p.id for p in sets.harmful_eval + sets.harmless_eval}
    assert len(seen) == 6
    for ids, want_refused, op in seen:
        assert ids == val["harmless" if want_refused else "harmful"] and not ids & held_out
        assert op.kind == ("set" if want_refused else "scale")


def test_best_trial_takes_the_highest_rate_then_the_mildest_value():
    def trial(value, rate):
        return ValueTrial(value=value, rate=rate, ci_low=0, ci_high=1, n=4, mean_refusal_score=0)

    assert best_trial([trial(-3, 0.5), trial(-1, 0.75), trial(-2, 0.75)]).value == -1
    assert best_trial([trial(8, 0.9), trial(2, 0.1)]).value == 8


def test_induced_values_absolute_and_relative():
    means = {(1, 2): 2.0, (1, 3): None, (2, 5): 4.0}
    assert induced_values(means, 3.0, "absolute") == {(1, 2): 3.0, (1, 3): 3.0, (2, 5): 3.0}
    assert induced_values(means, 3.0, "mean_activation") == {(1, 2): 6.0, (1, 3): 9.0, (2, 5): 12.0}
    with pytest.raises(ValueError, match="induce_mode = 'absolute'"):
        induced_values({(1, 2): None}, 3.0, "mean_activation")


def test_atp_at_the_candidate_layers(setup, attribution_run):
    root, config = setup
    out, _ = attribution_run
    result = run_pipeline(_config(config, method="atp", layers="candidates", activation_difference=False), out,
                          until="attribution")["attribution"]
    assert (result.method, result.steps) == ("atp", 1)
    assert all(t.m_change is None for t in result.layer_totals)
    assert "activation_difference" not in result.feature_sets and result.layers == [1, 2]


def test_k_larger_than_the_candidates_found_at_run_time(setup, attribution_run):
    root, config = setup
    out, _ = attribution_run
    with pytest.raises(ValueError, match=r"attribution.k = 13 is larger than the 12 cosine candidates"):
        run_pipeline(_config(config, k=13), out, until="attribution")


@pytest.mark.parametrize("section, message", [
    ({"attribution": {"steps": 0}}, "steps"),
    ({"attribution": {"induce_values": []}}, "empty v sweep"),
    ({"attribution": {"scales": []}}, "at least one clamp scale"),
    ({"attribution": {"scales": [1.0, -1.0]}}, "leaves the features unchanged"),
    ({"attribution": {"method": "shap"}}, "method"),
    ({"attribution": {"k": 30}, "candidates": {"top_k": 10, "layers": [14, 18]}},
     "attribution.k = 30 is larger than the 20 cosine candidates"),
    ({"attribution": {"layers": [14]}, "candidates": {"layers": [14, 18]}}, "miss the candidate layers"),
    ({"attribution": {"judge": "refusal_score"}}, "select_by"),
])
def test_bad_attribution_settings_are_clear_errors(section, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.model_validate(section)


def test_demo_config_is_valid_and_cheap():
    from refusal_lens.pipeline.config import demo_config

    config = demo_config().attribution
    assert config.method == "atp" and config.select_by == "refusal_score" and config.layers == "candidates"


@pytest.mark.parametrize("op", [FeatureOp("zero"), FeatureOp("scale", -2.0), FeatureOp("set", 5.0),
                                FeatureOp.set_each({(1, 3): 2.5, (2, 7): -1.0}),
                                FeatureOp.set_each({(1, 3): 2.5}, default=4.0)])
def test_feature_set_files_round_trip_their_op(tmp_path, op):
    path = save_feature_set(tmp_path / "set.json", [(1, 3), (2, 7)], saes="organism", op=op)
    loaded = load_feature_set(path)
    assert loaded.op == op and loaded.features == [(1, 3), (2, 7)] and loaded.saes == "organism"


@pytest.mark.parametrize("operation, features, message", [
    ({"kind": "set"}, [{"layer": 1, "feature": 3}], "needs a value"),
    ({"kind": "scale"}, [{"layer": 1, "feature": 3}], "needs a value"),
    ({"kind": "set"}, [{"layer": 1, "feature": 3, "value": 2}, {"layer": 1, "feature": 4}], "needs a value"),
    ({"kind": "scale", "value": -1}, [{"layer": 1, "feature": 3, "value": 2}], "only the 'set' operation"),
    ({"kind": "set", "value": "high"}, [{"layer": 1, "feature": 3}], "Bad 'operation'"),
])
def test_feature_set_file_without_its_value_is_a_clear_error(tmp_path, operation, features, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"saes": "organism", "operation": operation, "features": features}))
    with pytest.raises(InterventionFileError, match=message):
        load_feature_set(path)


def test_set_file_with_every_feature_valued_needs_no_operation_value(tmp_path):
    path = tmp_path / "each.json"
    path.write_text(json.dumps({"saes": "organism", "operation": {"kind": "set"},
                                "features": [{"layer": 1, "feature": 3, "value": 2}]}))
    assert load_feature_set(path).op == FeatureOp.set_each({(1, 3): 2.0})


def test_eval_accepts_the_exported_induce_and_clamp_files(setup, attribution_run):
    root, config = setup
    out, results = attribution_run
    for name in ("cossim_ap_induce", "cossim_ap_clamp"):
        report = root / f"eval_{name}.json"
        result = CliRunner().invoke(app, ["eval", "--model", config["model"]["name"], "--device", "cpu",
                                          "--prompts", str(root / "harmless.txt"), "--limit", "2",
                                          "--max-new-tokens", "2", "--intervention",
                                          f"features:{out / 'feature_sets' / f'{name}.json'}", "--out", str(report)])
        assert result.exit_code == 0, result.output
        details = json.loads(report.read_text())["summary"]["config"]["intervention_details"][0]
        assert details["op"] == load_feature_set(out / "feature_sets" / f"{name}.json").op.describe()
