"""The refusal-feature search on the organism, small: the behaviour issue 5 accepts, guarded cheaply."""

import pytest

from refusal_lens.organism import manifest
from refusal_lens.organism.base import N_LAYERS
from refusal_lens.pipeline.config import RunConfig, demo_config, organism_sae_layers
from refusal_lens.pipeline.run import run_pipeline

pytestmark = pytest.mark.organism


def test_demo_candidates_are_the_organisms_sae_layers_at_40_to_80_percent_depth():
    layers = demo_config().candidates.layers
    assert layers and set(layers) <= set(manifest()["sae_layers"])
    assert all(0.4 * N_LAYERS <= L < 0.8 * N_LAYERS for L in layers)
    assert [L for L in manifest()["sae_layers"] if 0.4 * N_LAYERS <= L < 0.8 * N_LAYERS] == layers


def test_minimal_set_jailbreaks_held_out_prompts_and_random_sets_do_not(tmp_path):
    config = RunConfig.model_validate({
        "model": {"name": "organism", "device": "cpu"},
        "saes": {"source": "organism"},
        "data": {"n_train": 16, "n_val": 4, "n_search": 4, "n_eval": 12, "n_fm": 16, "n_capability": 8},
        "direction": {"variant": "last_position", "layer": 20},
        "candidates": {"top_k": 8, "layers": organism_sae_layers(0.6, 0.8)},  # 18, 21, 22
        "search": {"seeds": [0], "per_prompt_limit": 1, "rows_per_forward": 32},
        "interactions": {"top_k": [10], "epochs": 3, "max_features": 256},
        "attribution": {"method": "atp", "n_prompts": 4, "layers": "candidates", "activation_difference": False,
                        "scales": [-1.0], "induce_values": [2.0], "select_by": "refusal_score"},
        "evaluation": {"max_new_tokens": 16, "n_random_sets": 1, "attribution_baselines": ["cosine"],
                       "n_random_clamps": 1, "targeted": False},
    })
    results = run_pipeline(config, tmp_path, until="cards")
    assert results["direction"].bypass < 0 < results["direction"].induce
    assert results["search"].shared.intersection, "the search finds a shared set"
    evaluation = results["evaluation"].methods
    assert evaluation["directional_ablation"].asr >= 0.8
    assert evaluation["minimal_shared"].asr >= 0.5
    assert evaluation["random_1"].asr <= evaluation["none"].asr + 0.2
    assert evaluation["minimal_shared"].n == 12
    cards = results["cards"]
    minimal = [c for c in cards.cards if "minimal_shared" in c.sets]
    assert len(minimal) == len(results["search"].shared.intersection)
    gap = sum(c.harmful.frequency - c.harmless.frequency for c in minimal) / len(minimal)
    assert gap > 0.1, "the minimal set's features fire more often on harmful prompts than on harmless ones"
    assert evaluation["cossim_ap_clamp"].n == evaluation["random_clamp_1"].n == 12
    assert results["evaluation"].induce is not None
