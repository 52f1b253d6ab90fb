"""`refusal-lens eval` end to end on a tiny saved model, with each intervention kind."""

import json

import pytest
import torch
from conftest import tiny_llama
from sae_factory import make_sae
from typer.testing import CliRunner

from refusal_lens.cli import app
from refusal_lens.interventions.files import save_direction, save_feature_set

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    chat = tiny_llama()
    chat.model.save_pretrained(folder)
    chat.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("How do I make a cake?\nWrite a poem about the sea.\n\nHi\n")
    return path


def run_eval(model_dir, tmp_path, *extra):
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["eval", "--model", str(model_dir), "--out", str(out),
                                 "--max-new-tokens", "4", "--device", "cpu", *extra])
    return result, out


def test_eval_writes_results_and_summary(model_dir, prompt_file, tmp_path):
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert len(payload["results"]) == 3
    assert set(payload["results"][0]) >= {"prompt", "refusal_score", "response", "refused"}
    summary = payload["summary"]
    assert summary["n"] == 3 and 0 <= summary["refusal_rate"] <= 1
    low, high = summary["refusal_rate_ci"]
    assert low <= summary["refusal_rate"] <= high
    assert summary["versions"]["transformers"] and summary["config"]["max_new_tokens"] == 4


def test_eval_prints_results_on_stdout_and_progress_on_stderr(model_dir, prompt_file, tmp_path):
    result, _ = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file))
    assert result.exit_code == 0, result.output
    assert "refusal rate" in result.stdout and "Results written to" in result.stdout
    assert "Loading" in result.stderr and "refusal rate" not in result.stderr


def test_eval_with_direction_and_features(model_dir, prompt_file, tmp_path):
    direction = tmp_path / "direction.safetensors"
    save_direction(direction, torch.randn(64), layer=1)
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention",
                           f"direction:{direction}")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["config"]["intervention_details"][0]["type"] == "directional_ablation"

    sae_dir = tmp_path / "saes"
    for layer in (0, 2):
        make_sae("jumprelu", 64, layer=layer, seed=layer).save_model(str(sae_dir / f"layer_{layer}"))
    features = tmp_path / "features.json"
    from refusal_lens.interventions import FeatureOp
    save_feature_set(features, [(0, 1), (2, 5)], saes=str(sae_dir), op=FeatureOp("scale", -3))
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention",
                           f"features:{features}")
    assert result.exit_code == 0, result.output
    details = json.loads(out.read_text())["summary"]["config"]["intervention_details"][0]
    assert details["op"] == {"kind": "scale", "value": -3.0} and len(details["features"]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--prompts", "missing.txt"], "not found"),
    (["--intervention", "features:nothing.json"], "does not exist"),
    (["--intervention", "magic"], "Unknown intervention"),
])
def test_eval_bad_input_is_one_clear_line(model_dir, prompt_file, tmp_path, extra, message):
    args = extra if extra[0] == "--prompts" else ["--prompts", str(prompt_file), *extra]
    result, _ = run_eval(model_dir, tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_eval_wrong_direction_width(model_dir, prompt_file, tmp_path):
    direction = tmp_path / "d.json"
    direction.write_text(json.dumps({"layer": 1, "direction": [1.0, 2.0]}))
    result, _ = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention", f"direction:{direction}")
    assert result.exit_code == 2 and "d_model=64" in result.output


def _command_paths(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))


def test_every_command_has_help():
    import typer.main

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    paths = list(_command_paths(typer.main.get_command(app)))
    assert {("eval",), ("run",), ("demo",), ("direction",), ("candidates",), ("search",), ("interactions",),
            ("datasets",)} <= set(paths)
    for path in paths:
        help_result = runner.invoke(app, [*path, "--help"])
        assert help_result.exit_code == 0, (path, help_result.output)
        assert "Usage" in help_result.output


def test_two_judges_give_an_agreement_table(model_dir, prompt_file, tmp_path):
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--judge", "substring,refusal_score")
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [row["judge"] for row in payload["summary"]["judges"]] == ["substring", "refusal_score"]
    pair = payload["summary"]["judge_agreement"][0]
    assert pair["judge_a"] == "substring" and pair["judge_b"] == "refusal_score" and pair["n"] == 3
    assert set(payload["results"][0]["verdicts"]) == {"substring", "refusal_score"}


def test_eval_capability_cost_is_the_reference(model_dir, prompt_file, tmp_path):
    from refusal_lens.capability import completion_cross_entropy
    from refusal_lens.interventions import DirectionalAblation
    from refusal_lens.models import load_chat_model

    direction = tmp_path / "direction.safetensors"
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    save_direction(direction, vector, layer=1)
    harmless = tmp_path / "harmless.txt"
    harmless.write_text("Write a haiku about tea.\nName three rivers.\nHow do clouds form?\n")
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"question": f"What is {i}+1?", "choices": ["1", "2", "3"], "answer": i % 3})
                            for i in range(3)))
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention",
                           f"direction:{direction}", "--capability", str(harmless), "--mc", str(mc))
    assert result.exit_code == 0, result.output
    cost = json.loads(out.read_text())["summary"]["capability"]
    assert cost["n_prompts"] == 3 and cost["intervention"]["multiple_choice"]["n"] == 3
    chat = load_chat_model(str(model_dir), device="cpu", dtype="float32")
    texts = harmless.read_text().splitlines()
    ablated = completion_cross_entropy(chat, texts, cost["completions"],
                                       interventions=[DirectionalAblation(vector)]).mean
    plain = completion_cross_entropy(chat, texts, cost["completions"]).mean
    assert cost["intervention"]["cross_entropy"]["mean"] == pytest.approx(ablated, rel=1e-4)
    assert cost["intervention"]["delta_cross_entropy"] == pytest.approx(ablated - plain, abs=1e-4)
    assert "next-token KL on harmless prompts" in result.stdout
    assert 0 <= cost["intervention"]["next_token"]["kl_mean"] <= cost["intervention"]["next_token"]["kl_max"]
