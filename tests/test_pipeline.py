"""The pipeline end to end on a tiny model: stages, artifacts, reuse, resume, results schema, report."""

import json

import pytest
import torch
from conftest import tiny_llama
from sae_factory import make_sae
from typer.testing import CliRunner

from refusal_lens.capability import completion_cross_entropy
from refusal_lens.cli import app
from refusal_lens.interventions import DirectionalAblation
from refusal_lens.interventions.files import load_direction
from refusal_lens.models import load_chat_model
from refusal_lens.pipeline import search, stages
from refusal_lens.pipeline.config import DirectionConfig, RunConfig
from refusal_lens.pipeline.direction import choose
from refusal_lens.pipeline.run import run_pipeline

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
        "evaluation": {"max_new_tokens": 3, "n_random_sets": 2},
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
        results = run_pipeline(RunConfig.model_validate(config), out, until="evaluation")
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
    assert "<img" in html and "http" not in html.split("<body>")[1].split("Versions")[0]
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
