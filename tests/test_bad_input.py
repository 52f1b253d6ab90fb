"""Every command, every kind of bad input: one clear line naming the problem (and the fix),
exit code 2, no traceback (`refusal-lens --debug` shows it), and no output left behind."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_llama
from sae_factory import make_sae
from typer.testing import CliRunner

from refusal_lens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny saved model with SAEs at layers 1 and 2, and files good and bad."""
    root = tmp_path_factory.mktemp("bad-input")
    chat = tiny_llama()
    chat.model.save_pretrained(root / "model")
    chat.tokenizer.save_pretrained(root / "model")
    for layer in (1, 2):
        make_sae("jumprelu", 64, d_sae=48, layer=layer, seed=layer).save_model(str(root / "saes" / f"layer_{layer}"))
    files = {
        "prompts.txt": "How do I bake bread?\nWrite a poem.\n",
        "empty.txt": "\n\n",
        "prompts.xyz": "hello\n",
        "broken.json": '["unterminated"',
        "no_text.jsonl": '{"category": "x"}\n',
        "features_layer3.json": {"saes": str(root / "saes"), "features": [{"layer": 3, "feature": 3}]},
        "features_layer99.json": {"saes": str(root / "saes"), "features": [{"layer": 99, "feature": 3}]},
        "features_wide.json": {"saes": str(root / "saes"), "features": [{"layer": 1, "feature": 4000}]},
        "features_empty.json": {"saes": str(root / "saes"), "features": []},
        "features_unknown_saes.json": {"saes": "no-such-release", "features": [{"layer": 1, "feature": 3}]},
        "features_set_no_value.json": {"saes": str(root / "saes"), "operation": {"kind": "set"},
                                       "features": [{"layer": 1, "feature": 3}]},
        "direction_width.json": {"layer": 1, "direction": [1.0, 2.0]},
        "run.toml": f'[model]\nname = "{root / "model"}"\ndevice = "cpu"\n[saes]\nsource = "{root / "saes"}"\n',
        "typo.toml": '[model]\nnmae = "organism"\n',
        "invalid.toml": "[data]\nn_eval = 0\n",
        "attribution_k.toml": "[candidates]\ntop_k = 3\nlayers = [1, 2]\n[attribution]\nk = 7\n",
        "attribution_steps.toml": "[attribution]\nsteps = 0\n",
        "attribution_sweep.toml": "[attribution]\ninduce_values = []\n",
        "malformed.toml": "[model\n",
        "config.yaml": "model: organism\n",
    }
    for name, content in files.items():
        path = root / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    (root / "random.json").write_bytes(bytes(range(128, 256)) * 4)
    (root / "blocker").write_text("a file where a folder is expected")
    return root


def eval_args(world, *extra):
    return ["eval", "--model", str(world / "model"), "--device", "cpu", "--max-new-tokens", "2",
            "--prompts", str(world / "prompts.txt"), *extra]


CASES = {
    # eval: files
    "missing prompt file": (lambda w: eval_args(w, "--prompts", str(w / "nope.txt")), "not found"),
    "prompt file is a folder": (lambda w: eval_args(w, "--prompts", str(w / "saes")), "is a folder"),
    "prompt file of unknown format": (lambda w: eval_args(w, "--prompts", str(w / "prompts.xyz")), "Unsupported"),
    "prompt file not text": (lambda w: eval_args(w, "--prompts", str(w / "random.json")), "not UTF-8 text"),
    "malformed JSON": (lambda w: eval_args(w, "--prompts", str(w / "broken.json")), "broken.json"),
    "rows without text": (lambda w: eval_args(w, "--prompts", str(w / "no_text.jsonl")), "no_text.jsonl"),
    "empty prompt file": (lambda w: eval_args(w, "--prompts", str(w / "empty.txt")), "empty.txt"),
    "prompts and dataset both": (lambda w: eval_args(w, "--dataset", "harmless-plain"), "exactly one"),
    "unknown data set": (lambda w: ["eval", "--dataset", "no-such-set", "--model", str(w / "model")], "no-such-set"),
    "unknown split": (lambda w: eval_args(w, "--split", "holdout"), "holdout"),
    # eval: model, interventions, output
    "unknown model": (lambda w: eval_args(w, "--model", "not-a-model"), "Unknown model"),
    "unknown intervention": (lambda w: eval_args(w, "--intervention", "magic"), "Unknown intervention"),
    "intervention file missing": (lambda w: eval_args(w, "--intervention", "features:nope.json"), "nope.json"),
    "feature layer without an SAE": (lambda w: eval_args(w, "--intervention", f"features:{w}/features_layer3.json"),
                                     "no SAE for layers [3]; it has [1, 2]"),
    "feature layer out of range": (lambda w: eval_args(w, "--intervention", f"features:{w}/features_layer99.json"),
                                   "99"),
    "feature index beyond the SAE's width": (
        lambda w: eval_args(w, "--intervention", f"features:{w}/features_wide.json"), "4000"),
    "empty feature set": (lambda w: eval_args(w, "--intervention", f"features:{w}/features_empty.json"),
                          "features"),
    "unknown SAEs in a feature set": (
        lambda w: eval_args(w, "--intervention", f"features:{w}/features_unknown_saes.json"), "no-such-release"),
    "set op without a value": (
        lambda w: eval_args(w, "--intervention", f"features:{w}/features_set_no_value.json"), "value"),
    "direction of the wrong width": (lambda w: eval_args(w, "--intervention", f"direction:{w}/direction_width.json"),
                                     "2"),
    "unknown judge": (lambda w: eval_args(w, "--judge", "oracle"), "oracle"),
    "--out below a file": (lambda w: eval_args(w, "--out", str(w / "blocker" / "o.json")), "is a file"),
    "--out is a folder": (lambda w: eval_args(w, "--out", str(w / "saes")), "is a folder"),
    # datasets
    "datasets show unknown": (lambda w: ["datasets", "show", "no-such-set"], "no-such-set"),
    "datasets show bad split": (lambda w: ["datasets", "show", "harmless-plain", "--split", "x"], "split"),
    # run and stage commands
    "run config missing": (lambda w: ["run", "--config", str(w / "nope.toml"), "--out", str(w / "r1")], "nope.toml"),
    "run config malformed": (lambda w: ["run", "--config", str(w / "malformed.toml"), "--out", str(w / "r2")],
                             "malformed.toml"),
    "run config of another format": (lambda w: ["run", "--config", str(w / "config.yaml"), "--out", str(w / "r3")],
                                     ".toml or .json"),
    "run config with a misspelt key": (lambda w: ["run", "--config", str(w / "typo.toml"), "--out", str(w / "r4")],
                                       "nmae"),
    "run config with an invalid value": (lambda w: ["run", "--config", str(w / "invalid.toml"), "--out", str(w / "r5")],
                                         "n_eval"),
    "run with unknown SAEs": (lambda w: ["run", "--config", str(w / "run.toml"), "--saes", "no-such-release",
                                         "--out", str(w / "r6")], "no-such-release"),
    "run --out below a file": (lambda w: ["run", "--config", str(w / "run.toml"),
                                          "--out", str(w / "blocker" / "run")], "is a file"),
    "run --out is a file": (lambda w: ["run", "--config", str(w / "run.toml"), "--out", str(w / "blocker")],
                            "is a file"),
    "direction stage with a bad override": (lambda w: ["direction", "--config", str(w / "run.toml"), "--top-k", "0",
                                                       "--out", str(w / "r7")], "top_k"),
    "demo --out below a file": (lambda w: ["demo", "--out", str(w / "blocker" / "demo")], "is a file"),
    # feature cards
    "features show: no such run folder": (lambda w: ["features", "show", str(w / "no-run"), "1:2"], "does not exist"),
    "features show: not a run folder": (lambda w: ["features", "show", str(w / "saes"), "1:2"], "not a run folder"),
    "features show: a feature not LAYER:FEATURE": (lambda w: ["features", "show", str(w / "saes"), "12"],
                                                   "LAYER:FEATURE"),
    "features list: run folder is a file": (lambda w: ["features", "list", str(w / "blocker")], "is a file"),
    "attribute with k larger than the candidates": (
        lambda w: ["attribute", "--config", str(w / "attribution_k.toml"), "--out", str(w / "r8")],
        "attribution.k = 7 is larger than the 6 cosine candidates"),
    "attribute with no α steps": (
        lambda w: ["attribute", "--config", str(w / "attribution_steps.toml"), "--out", str(w / "r9")],
        "attribution.steps"),
    "attribute with an empty v sweep": (
        lambda w: ["attribute", "--config", str(w / "attribution_sweep.toml"), "--out", str(w / "r10")],
        "empty v sweep"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_exit_2(world, case, tmp_path):
    make_args, expected = CASES[case]
    args = make_args(world)
    if "eval" == args[0] and "--out" not in args:
        args += ["--out", str(tmp_path / "out.json")]
    before = set(world.rglob("*"))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (case, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert expected in result.output, (case, result.output)
    assert not (tmp_path / "out.json").exists()
    assert set(world.rglob("*")) == before, "a failed command left files behind"


def test_debug_shows_the_traceback(world, tmp_path):
    result = runner.invoke(app, ["--debug", *eval_args(world, "--prompts", str(world / "nope.txt")),
                                 "--out", str(tmp_path / "o.json")])
    assert result.exit_code != 2 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_organism_build_with_an_unknown_stage_says_which(capfd):
    result = runner.invoke(app, ["organism", "build", "--until", "nope"])
    assert result.exit_code == 2 and "Error: 2" not in result.output
    assert "invalid choice: 'nope'" in capfd.readouterr().err  # the recipe's own CLI, run as a subprocess
