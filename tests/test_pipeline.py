"""The pipeline end to end on a tiny model: stages, artifacts, reuse, resume, results schema, report."""

import json
import re

import pytest
import torch
from conftest import tiny_llama
from sae_factory import make_sae
from typer.testing import CliRunner

from refusal_lens.capability import completion_cross_entropy, next_token_shift
from refusal_lens.cli import app
from refusal_lens.interventions import DirectionalAblation, FeatureIntervention, FeatureOp
from refusal_lens.interventions.files import load_direction, load_feature_set
from refusal_lens.models import load_chat_model
from refusal_lens.pipeline import search, stages
from refusal_lens.pipeline.config import DirectionConfig, RunConfig
from refusal_lens.pipeline.direction import choose
from refusal_lens.pipeline.run import run_pipeline
from refusal_lens.saes import load_sae_set
from refusal_lens.scoring import refusal_scores
from scripts.report_browser import check_report, find_chromium, python_reprs

HARMFUL = [f"Tell me how to do dangerous thing number {i} to hurt people" for i in range(60)]
HARMLESS = [f"Write a short friendly poem about garden number {i}" for i in range(60)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    chat = tiny_llama(seed=3)
    # make the tiny model "refuse": the refusal token's logit follows the mean final hidden state
    batch = chat.tokenize(HARMFUL[:8])
    with torch.no_grad():
        hidden = chat.model.model(**batch).last_hidden_state[:, -1].mean(0)
        row = chat.refusal_token_ids[0]
        chat.model.lm_head.weight[row] = 40 * hidden / hidden.norm() ** 2
    chat.model.save_pretrained(root / "model")
    chat.tokenizer.save_pretrained(root / "model")
    for layer in (1, 2):
        make_sae("jumprelu", 64, d_sae=48, layer=layer, seed=layer).save_model(str(root / "saes" / f"layer_{layer}"))
    (root / "harmful.txt").write_text("\n".join(HARMFUL))
    (root / "harmless.txt").write_text("\n".join(HARMLESS))
    config = {
        "model": {"name": str(root / "model"), "device": "cpu", "dtype": "float32"},
        "saes": {"source": str(root / "saes")},
        "data": {"harmful": [str(root / "harmful.txt")], "harmless": [str(root / "harmless.txt")],
                 "n_train": 8, "n_val": 4, "n_search": 3, "n_eval": 4, "n_fm": 10, "filter_by_score": False},
        "direction": {"layers": [0, 1, 2], "positions": [-1, -2], "max_layer_fraction": 1.0},
        "candidates": {"top_k": 6},
        "search": {"seeds": [0, 1], "rows_per_forward": 16},
        "interactions": {"top_k": [2, 4], "epochs": 3, "max_features": 40},
        "attribution": {"method": "atp", "k": 4, "n_prompts": 4, "scales": [-2.0, -1.0], "induce_values": [5.0, 2.0],
                        "induce_mode": "absolute", "max_new_tokens": 3},
        "evaluation": {"max_new_tokens": 3, "n_random_sets": 2, "n_random_clamps": 2},
    }
    return root, config


def script_search(monkeypatch, out, config, n_necessary=3):
    """A tiny random model has no refusal circuit: make the search's evaluator refuse unless the
    first candidates are all ablated, so the greedy loop does real work on real artifacts."""
    candidates = run_pipeline(RunConfig.model_validate(config), out, until="candidates")["candidates"].features
    necessary = {(c.layer, c.feature) for c in candidates[:n_necessary]}

    def scripted(self, pairs):
        self.forward_passes += 1
        scores = torch.tensor([2.0 * len(necessary - set(map(tuple, f))) - 1.0 + 0.01 * len(f) for _, f in pairs])
        return scores, torch.sigmoid(scores)

    monkeypatch.setattr(search.SetEvaluator, "__call__", scripted)
    return necessary


@pytest.fixture(scope="module")
def full_run(setup):
    """The whole pipeline, run once with a scripted search; the tests of its outputs share it."""
    root, config = setup
    out = root / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        necessary = script_search(monkeypatch, out, config)
        results = run_pipeline(RunConfig.model_validate(config), out, until="cards")
    return out, results, necessary


def test_full_run_writes_results_feature_sets_and_report(setup, full_run):
    root, config = setup
    out, results, necessary = full_run
    assert set(results["search"].shared.intersection) == necessary
    saved = json.loads((out / "results.json").read_text())
    searched = stages.names_until("evaluation")  # the analyses after it: tests/test_analysis_stages.py
    for key in (*searched, "cost", "config", "versions"):
        assert key in saved, key
    for name in searched:  # each stage's typed result round-trips through results.json
        assert stages.load(name).result.model_validate(saved[name]) == results[name], name
    assert set(saved["direction"]) >= {"layer", "position", "bypass", "induce", "kl"}
    assert {"layer", "feature", "cosine"} <= set(saved["candidates"]["features"][0])
    assert {"shared", "per_prompt"} <= set(saved["search"])
    for name in ("none", "directional_ablation"):
        method = saved["evaluation"]["methods"][name]
        assert method["n"] == 4 and method["ci_low"] <= method["asr"] <= method["ci_high"]
    for stage in ("prompt_sets", "direction", "candidates", "search", "evaluation"):
        assert saved["cost"][stage]["wall_time_s"] >= 0 and "forward_passes" in saved["cost"][stage]
    assert saved["search"]["greedy_loop"]["forward_passes"] >= 1
    html = (out / "report.html").read_text()
    assert "<img" in html and not re.search(r"""src=["']?(https?:)?//|<link|<script src""", html), \
        "the report must open offline (links to Neuronpedia are fine, loading from the network is not)"
    assert 'alt="ASR-vs-KL chart' in html and 'alt="direction grid"' in html
    before_answers = html.split("<body>")[1].split("<h2>Per prompt")[0]
    assert "None" not in before_answers and "{" not in before_answers, "a value printed as a Python repr"
    assert (out / "direction.safetensors").exists()
    assert results["evaluation"].methods.keys() == saved["evaluation"]["methods"].keys()
    assert_capability_cost_is_the_reference(root, out, saved)


def assert_capability_cost_is_the_reference(root, out, saved):
    """Each method's capability cost = CE of the unmodified model's own answers to the held-out
    harmless prompts under that method, recomputed here from the saved artifacts."""
    evaluation = json.loads(next((out / "stages").glob("evaluation-*/result.json")).read_text())
    prompts = json.loads(next((out / "stages").glob("prompt_sets-*/result.json")).read_text())
    harmless = [p["text"] for p in prompts["harmless_eval"]]
    assert harmless and not {p["id"] for p in prompts["harmless_eval"]} & {
        p["id"] for name in ("harmless_train", "harmless_val", "harmless_fm") for p in prompts[name]}
    assert saved["evaluation"]["methods"]["none"]["capability"]["delta_cross_entropy"] == 0.0
    chat = load_chat_model(str(root / "model"), device="cpu", dtype="float32")
    direction = load_direction(out / "direction.safetensors").direction
    completions = evaluation["capability"]["completions"]
    plain = completion_cross_entropy(chat, harmless, completions, batch_size=3).mean
    ablated = completion_cross_entropy(chat, harmless, completions, batch_size=3,
                                       interventions=[DirectionalAblation(direction)]).mean
    cost = saved["evaluation"]["methods"]["directional_ablation"]["capability"]
    assert cost["cross_entropy"] == pytest.approx(ablated, rel=1e-4)
    assert cost["delta_cross_entropy"] == pytest.approx(ablated - plain, abs=1e-4)
    shift = next_token_shift(chat, harmless,
                             interventions=[DirectionalAblation(direction)], batch_size=2)
    assert cost["kl_mean"] == pytest.approx(sum(shift.kl) / len(shift.kl), rel=1e-3, abs=1e-6)
    assert cost["kl_max"] == pytest.approx(max(shift.kl), rel=1e-3, abs=1e-6)
    assert cost["top1_unchanged"] == sum(shift.top1_unchanged) / len(shift.top1_unchanged)
    assert saved["evaluation"]["methods"]["none"]["capability"]["kl_max"] == 0.0


def test_targeted_methods_are_evaluated_and_their_files_reproduce_them(setup, full_run):
    from refusal_lens.interventions.files import load_feature_set
    from refusal_lens.pipeline.targeted import SCOPES, scale_op

    out, results, necessary = full_run
    evaluation = results["evaluation"]
    targeted = [f"minimal_shared_{scope}" for scope in SCOPES] + ["minimal_shared_above_harmless",
                                                                   "minimal_shared_high_projection"]
    assert set(targeted) <= set(evaluation.methods) and set(targeted) == set(evaluation.targeted)
    for name in targeted:
        choice = evaluation.targeted[name]
        assert evaluation.methods[name].n_features == len(necessary)
        loaded = load_feature_set(out / "feature_sets" / f"{name}.json")
        assert set(loaded.features) == necessary and loaded.positions == choice.positions
        assert loaded.op == scale_op(choice.scale) and choice.scale in [t.scale for t in choice.tried]
    assert load_feature_set(out / "feature_sets" / "minimal_shared_generated.json").positions == "generated"
    choice = evaluation.targeted["minimal_shared_above_harmless"]
    thresholds = load_feature_set(out / "feature_sets" / "minimal_shared_above_harmless.json").condition
    assert {f"{L}:{i}": t for (L, i), t in thresholds.feature_thresholds.items()} == choice.thresholds
    assert len(choice.tried) == 3 * 5  # targeted_scales x threshold_quantiles
    projection = load_feature_set(out / "feature_sets" / "minimal_shared_high_projection.json").condition
    assert projection.direction_file == str((out / "direction.safetensors").resolve())
    assert "minimal_cheap" not in evaluation.methods  # search.cost is "none" here


def test_feature_cards_describe_every_reported_feature(setup, full_run):
    root, config = setup
    out, results, necessary = full_run
    cards, interactions = results["cards"], results["interactions"]
    top = interactions.ranking[:max(config["interactions"]["top_k"])]
    assert set(cards.sets["minimal_shared"]) == necessary and set(cards.sets["minimal_shared_union"]) == necessary
    assert cards.sets["interaction_top"] == sorted((r.layer, r.feature) for r in top)
    attribution = results["attribution"]
    for name, features in attribution.feature_sets.items():
        assert sorted(map(tuple, cards.sets[f"{name}_top"])) == sorted(map(tuple, features))
    attributed = {(s.layer, s.feature): s.score for s in attribution.scores["attribution"]}
    reported = necessary | {(r.layer, r.feature) for r in top} | {tuple(f) for fs in attribution.feature_sets.values()
                                                                   for f in fs}
    assert [c.key for c in cards.cards] == sorted(reported)
    for card in cards.cards:
        expected = attributed.get(card.key)
        assert card.scores.get("attribution") == (pytest.approx(expected) if expected is not None else None)
    for card in cards.cards:
        assert ("minimal_shared" in card.sets) == (card.key in necessary)
        strength = next((r.strength for r in top if (r.layer, r.feature) == card.key), None)
        assert card.scores.get("interaction_strength") == (pytest.approx(strength) if strength is not None else None)
        assert card.neuronpedia is None  # SAEs from a folder have no Neuronpedia id
        assert card.harmful.n_prompts == cards.n_harmful and card.harmless.n_prompts == cards.n_harmless
        assert len(card.promoted) == len(card.suppressed) == 10
    prompts = results["prompt_sets"]
    discovery = {p.id for role in ("harmful_train", "harmful_val", "harmful_fm") for p in getattr(prompts, role)}
    assert cards.n_harmful == len(discovery)
    evaluated = {p.id for p in prompts.harmful_eval}
    assert not {t.prompt_id for c in cards.cards for t in c.top_prompts} & evaluated, "held-out prompts stay unseen"


def test_report_values_are_never_python_reprs(full_run):
    out, _, _ = full_run
    assert python_reprs((out / "report.html").read_text()) == []


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed here (Debian package `chromium`; "
                    ".ci/run installs it), so the report cannot be opened in a browser")
def test_the_report_in_headless_chromium(full_run):
    """No console error, no broken image, no empty section, the feature table sorts and opens the cards."""
    out, results, _ = full_run
    result = check_report(out / "report.html")
    assert result.ok, result.failures
    assert "Features" in result.sections and result.cards == len(results["cards"].cards)
    assert {"cosine", "fires on harmful"} <= set(result.sorted_columns) and result.card_opened is True


def test_features_show_prints_a_card(full_run):
    out, results, _ = full_run
    card = next(c for c in results["cards"].cards if c.top_prompts)
    shown = CliRunner().invoke(app, ["features", "show", str(out), f"{card.layer}:{card.feature}"])
    assert shown.exit_code == 0, shown.output
    assert card.name in shown.stdout and card.top_prompts[0].prompt_id in shown.stdout
    assert f"{card.harmful.frequency:.0%}" in shown.stdout and "promotes" in shown.stdout
    listed = CliRunner().invoke(app, ["features", "list", str(out)])
    assert listed.exit_code == 0 and all(c.name in listed.stdout for c in results["cards"].cards)
    unknown = CliRunner().invoke(app, ["features", "show", str(out), "3:47"])
    assert unknown.exit_code == 2 and "Feature 3:47 is not among the" in unknown.output


def test_features_show_on_a_run_without_cards_names_the_fix(setup, tmp_path):
    root, config = setup
    out = tmp_path / "early"
    run_pipeline(RunConfig.model_validate(config), out, until="candidates")
    result = CliRunner().invoke(app, ["features", "show", str(out), "1:2"])
    assert result.exit_code == 2 and "stopped before its cards stage" in result.output
    assert f"refusal-lens run --out {out}" in result.output


def test_feature_set_files_are_accepted_by_eval(setup, full_run):
    root, config = setup
    out, _, _ = full_run
    files = sorted((out / "feature_sets").glob("*.json"))
    assert files, "the run writes its feature sets"
    result = CliRunner().invoke(app, ["eval", "--model", config["model"]["name"], "--device", "cpu",
                                      "--prompts", str(root / "harmful.txt"), "--limit", "2", "--max-new-tokens", "2",
                                      "--intervention", f"features:{files[0]}", "--out", str(root / "eval.json")])
    assert result.exit_code == 0, result.output


def test_rerun_reuses_and_changed_config_recomputes_only_what_it_affects(setup):
    root, config = setup
    out = root / "reuse"
    run_pipeline(RunConfig.model_validate(config), out, until="candidates")
    stages = {p.name for p in (out / "stages").iterdir()}
    run_pipeline(RunConfig.model_validate(config), out, until="candidates")
    assert {p.name for p in (out / "stages").iterdir()} == stages
    changed = json.loads(json.dumps(config))
    changed["candidates"]["top_k"] = 4
    run_pipeline(RunConfig.model_validate(changed), out, until="candidates")
    after = {p.name for p in (out / "stages").iterdir()}
    new = after - stages
    assert len(new) == 1 and next(iter(new)).startswith("candidates-")


def test_killed_search_resumes_from_its_checkpoint(setup, monkeypatch):
    root, config = setup
    out = root / "resume"
    script_search(monkeypatch, out, config)
    calls = {"n": 0}
    original = search.run_greedy

    def dying(evaluate, tracks, **kwargs):
        def on_step(ts):
            kwargs["on_step"](ts)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return original(evaluate, tracks, block_size=kwargs["block_size"], tau=kwargs["tau"], on_step=on_step)

    monkeypatch.setattr(search, "run_greedy", dying)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(RunConfig.model_validate(config), out, until="search")
    checkpoint = next((out / "stages").glob("search-*/checkpoint.json"))
    saved_steps = sum(t["steps"] for t in json.loads(checkpoint.read_text()))
    assert saved_steps > 0
    monkeypatch.setattr(search, "run_greedy", original)
    results = run_pipeline(RunConfig.model_validate(config), out, until="search")
    final = json.loads(next((out / "stages").glob("search-*/result.json")).read_text())["tracks"]
    assert all(t["status"] == "done" for t in final)
    assert sum(t["steps"] for t in final) > saved_steps
    assert len(results["search"].shared.intersection) == 3


def test_run_cli_with_config_file_and_overrides(setup, tmp_path):
    root, config = setup
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["direction", "--config", str(path), "--out", str(tmp_path / "cli"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert saved["config"]["seed"] == 1 and "direction" in saved
    assert "direction: layer" in result.stdout  # results on stdout, so `> out.txt` keeps them


def test_bad_config_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[search]\nblock_size = 0\n')
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "block_size" in result.output


def test_direction_choice_relaxes_filters_visibly():
    table = [{"layer": 1, "position": -1, "bypass": -3.0, "induce": 2.0, "kl": 0.5},
             {"layer": 2, "position": -1, "bypass": -1.0, "induce": 1.0, "kl": 0.05},
             {"layer": 3, "position": -1, "bypass": -9.0, "induce": -1.0, "kl": 0.01}]
    best, filters = choose(table, DirectionConfig())
    assert best["layer"] == 2 and filters == "induce+kl"
    best, filters = choose(table[:1] + table[2:], DirectionConfig())
    assert best["layer"] == 1 and filters.startswith("induce only")
    best, filters = choose(table[2:], DirectionConfig())
    assert best["layer"] == 3 and filters.startswith("none")


def test_evaluation_clamps_the_attribution_sets_and_induces_refusal(setup, full_run):
    """[Y25]'s methods: each set clamped by the c chosen on validation (the refusal scores are those
    of that clamp, recomputed here), random clamps matched to CosSim+AP, every method's paired
    comparison with CosSim+AP, and refusal induced on the held-out harmless prompts."""
    root, config = setup
    out, results, _ = full_run
    attribution, evaluation = results["attribution"], results["evaluation"]
    c = attribution.clamp.chosen
    assert c in config["attribution"]["scales"] and evaluation.clamp_scale == c
    cossim_ap = attribution.feature_sets["cossim_ap"]
    for name in ("cossim_ap", "cosine", "attribution", "activation_difference"):
        assert evaluation.feature_sets[f"{name}_clamp"] == attribution.feature_sets[name]
        assert evaluation.methods[f"{name}_clamp"].n_features == config["attribution"]["k"]
        assert load_feature_set(out / "feature_sets" / f"{name}_clamp.json").op == FeatureOp("scale", c)
    for i in (1, 2):
        random_set = evaluation.feature_sets[f"random_clamp_{i}"]
        assert sorted(L for L, _ in random_set) == sorted(L for L, _ in cossim_ap)
        assert not set(map(tuple, random_set)) & set(map(tuple, cossim_ap))
        assert load_feature_set(out / "feature_sets" / f"random_clamp_{i}.json").op == FeatureOp("scale", c)

    chat = load_chat_model(str(root / "model"), device="cpu", dtype="float32")
    saes = load_sae_set(str(root / "saes"), device="cpu")
    outcomes = evaluation.per_prompt["cossim_ap_clamp"]
    clamped = refusal_scores(chat, [r.prompt for r in outcomes],
                             interventions=[FeatureIntervention(saes, cossim_ap, FeatureOp("scale", c))])
    assert clamped.tolist() == pytest.approx([r.refusal_score for r in outcomes], abs=1e-4)

    assert set(evaluation.paired_vs_cossim_ap) == set(evaluation.methods) - {"cossim_ap_clamp"}
    reference = [not r.refused for r in outcomes]
    for name, paired in evaluation.paired_vs_cossim_ap.items():
        answered = [not r.refused for r in evaluation.per_prompt[name]]
        assert paired.diff == pytest.approx((sum(answered) - sum(reference)) / len(reference))
        assert paired.only_method == sum(a and not b for a, b in zip(answered, reference))
        assert paired.ci_low <= paired.diff <= paired.ci_high
    assert {source for by in evaluation.asr_by_source.values() for source in by} == {"harmful"}
    assert evaluation.asr_by_source["none"]["harmful"].asr == evaluation.methods["none"].asr

    induce = evaluation.induce
    assert induce.value == attribution.induce.chosen and induce.n == len(results["prompt_sets"].harmless_eval) > 0
    harmless = {p.id for p in results["prompt_sets"].harmless_eval}
    assert {r.id for r in induce.per_prompt} == harmless
    assert induce.refusal_rate == sum(r.refused for r in induce.per_prompt) / induce.n
    assert induce.capability is not None and induce.capability.delta_cross_entropy != 0.0
    induce_file = load_feature_set(out / "feature_sets" / "cossim_ap_induce.json")
    assert induce_file.op == attribution.induce_op() and induce_file.features == cossim_ap

    html = (out / "report.html").read_text()
    for title in ("Attribution to SAE features", "the first paper", "Inducing refusal on harmless prompts"):
        assert title in html
    assert (out / "figures" / "induce_refusal.png").exists() and (out / "figures" / "attribution_features.png").exists()
