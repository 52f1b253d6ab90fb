"""The refusal-feature search on the organism, small: the behaviour issue 5 accepts, guarded cheaply."""

import pytest

from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.run import run_pipeline

pytestmark = pytest.mark.organism


def test_minimal_set_jailbreaks_held_out_prompts_and_random_sets_do_not(tmp_path):
    config = RunConfig.model_validate({
        "model": {"name": "organism", "device": "cpu"},
        "saes": {"source": "organism"},
        "data": {"n_train": 16, "n_val": 4, "n_search": 4, "n_eval": 12, "n_fm": 16},
        "direction": {"variant": "last_position", "layer": 20},
        "candidates": {"top_k": 8, "layers": [18, 21, 22]},
        "search": {"seeds": [0], "per_prompt_limit": 1, "rows_per_forward": 32},
        "interactions": {"top_k": [10], "epochs": 3, "max_features": 256},
        "evaluation": {"max_new_tokens": 16, "n_random_sets": 1},
    })
    results = run_pipeline(config, tmp_path)
    assert results["direction"]["bypass"] < 0 < results["direction"]["induce"]
    assert results["minimal_set"]["shared"], "the search finds a shared set"
    evaluation = results["evaluation"]
    assert evaluation["directional_ablation"]["asr"] >= 0.8
    assert evaluation["minimal_shared"]["asr"] >= 0.5
    assert evaluation["random_1"]["asr"] <= evaluation["none"]["asr"] + 0.2
    assert evaluation["minimal_shared"]["n"] == 12
