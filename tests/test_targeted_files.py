"""Scoped and conditional edits in feature-set files and in `refusal-lens eval`."""

import json

import pytest
import torch
from sae_factory import make_sae
from test_eval_cli import model_dir, prompt_file, run_eval  # noqa: F401 (fixtures)

from refusal_lens.interventions import (
    FeatureIntervention,
    FeatureOp,
    ProjectionGatedFeatureIntervention,
    ScopedFeatureIntervention,
    ThresholdFeatureIntervention,
)
from refusal_lens.interventions.files import InterventionFileError, load_feature_set, save_direction, save_feature_set
from refusal_lens.interventions.parse import feature_intervention
from refusal_lens.saes import SAESet

FEATURES = [(0, 1), (2, 5)]


@pytest.fixture(scope="module")
def saes():
    return SAESet.from_saes({L: make_sae("jumprelu", 64, seed=L, layer=L) for L in (0, 2)})


def test_positions_and_thresholds_round_trip(tmp_path, saes):
    path = save_feature_set(tmp_path / "f.json", FEATURES, saes="x", op=FeatureOp("scale", -3), positions="prompt",
                            feature_thresholds={(0, 1): 0.5, (2, 5): 1.25})
    loaded = load_feature_set(path)
    assert loaded.positions == "prompt" and loaded.features == FEATURES
    assert loaded.condition.feature_thresholds == {(0, 1): 0.5, (2, 5): 1.25}
    edit = feature_intervention(saes, loaded)
    assert isinstance(edit, ThresholdFeatureIntervention) and edit.scope == "prompt"
    assert edit.describe()["thresholds"] == [0.5, 1.25]
    assert feature_intervention(saes, loaded, positions="generated").scope == "generated"


def test_plain_and_scoped_files(tmp_path, saes):
    plain = load_feature_set(save_feature_set(tmp_path / "p.json", FEATURES, saes="x"))
    assert "positions" not in json.loads((tmp_path / "p.json").read_text())
    assert type(feature_intervention(saes, plain)) is FeatureIntervention
    scoped = feature_intervention(saes, plain, positions="post_instruction")
    assert isinstance(scoped, ScopedFeatureIntervention) and scoped.scope == "post_instruction"


def test_projection_condition_reads_the_direction_relative_to_the_file(tmp_path, saes):
    direction = torch.randn(64)
    save_direction(tmp_path / "direction.safetensors", direction, layer=1)
    (tmp_path / "sets").mkdir()
    path = save_feature_set(tmp_path / "sets" / "f.json", FEATURES, saes="x",
                            projection={"direction": "../direction.safetensors", "thresholds": {0: 0.5, 2: 1.0}})
    loaded = load_feature_set(path)
    torch.testing.assert_close(loaded.condition.direction, direction)
    assert loaded.condition.layer_thresholds == {0: 0.5, 2: 1.0}
    edit = feature_intervention(saes, loaded)
    assert isinstance(edit, ProjectionGatedFeatureIntervention) and edit.thresholds == {0: 0.5, 2: 1.0}


@pytest.mark.parametrize("change, message", [
    ({"positions": "everywhere"}, "Bad 'positions'"),
    ({"condition": {"kind": "magic"}}, "'kind' must be one of"),
    ({"condition": {"kind": "feature_threshold"}}, "needs a numeric 'threshold'"),
    ({"condition": {"kind": "direction_projection", "thresholds": {"0": 1}}}, "needs 'direction'"),
    ({"condition": {"kind": "direction_projection", "direction": "none.safetensors", "thresholds": {"0": 1}}},
     "does not exist"),
])
def test_bad_files_are_clear_errors(tmp_path, change, message):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"saes": "x", "features": [{"layer": 0, "feature": 1}], **change}))
    with pytest.raises(InterventionFileError, match=message):
        load_feature_set(path)


def test_eval_with_scoped_and_conditional_files(model_dir, prompt_file, tmp_path):  # noqa: F811
    sae_dir = tmp_path / "saes"
    for layer in (0, 2):
        make_sae("jumprelu", 64, layer=layer, seed=layer).save_model(str(sae_dir / f"layer_{layer}"))
    features = save_feature_set(tmp_path / "t.json", FEATURES, saes=str(sae_dir), positions="post_instruction",
                                feature_thresholds={(0, 1): 0.1, (2, 5): 0.2})
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention",
                           f"features:{features}")
    assert result.exit_code == 0, result.output
    details = json.loads(out.read_text())["summary"]["config"]["intervention_details"][0]
    assert details["positions"] == "post_instruction" and details["condition"] == "feature_above_threshold"
    result, out = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention",
                           f"features:{features}", "--positions", "generated")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["config"]["intervention_details"][0]["positions"] == "generated"


@pytest.mark.parametrize("intervention, positions, message", [
    ("none", "prompt", "use it with --intervention features:FILE"),
    ("none", "somewhere", "Unknown --positions"),
])
def test_eval_bad_positions(model_dir, prompt_file, tmp_path, intervention, positions, message):  # noqa: F811
    result, _ = run_eval(model_dir, tmp_path, "--prompts", str(prompt_file), "--intervention", intervention,
                         "--positions", positions)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
