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
from refusal_lens.interventions.files import InterventionFileError, load_direction, load_feature_set, save_feature_set
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


def test_stage_smoke(attribution_run):
    out, results = attribution_run
    print(results["attribution"].model_dump_json(indent=1)[:3000])
