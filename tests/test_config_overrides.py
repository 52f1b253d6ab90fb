"""CLI overrides that were not given never reach the configuration (issue: six pydantic errors)."""

from __future__ import annotations

import pytest

from refusal_lens.config import ConfigError, build_config, deep_update
from refusal_lens.pipeline.config import RunConfig

NOT_GIVEN = {"model": {"name": None, "device": None, "dtype": None, "device_map": None},
             "saes": {"source": None}, "seed": None,
             "data": {"n_search": None, "n_eval": None}, "candidates": {"top_k": None},
             "search": {"tau": None}, "evaluation": {"judge": None}}


def test_overrides_not_given_leave_the_defaults():
    config = build_config(RunConfig, None, NOT_GIVEN)
    assert config == RunConfig()


def test_a_file_with_only_some_sections_gets_the_rest_from_the_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "organism"\n[saes]\nsource = "organism"\n')
    config = build_config(RunConfig, path, NOT_GIVEN)
    assert config.data == RunConfig().data and config.evaluation == RunConfig().evaluation


def test_given_overrides_win_and_keep_their_siblings():
    merged = deep_update({"data": {"n_search": 3, "n_eval": 8}},
                         {"data": {"n_search": None, "n_eval": 5}, "search": {"tau": None}})
    assert merged == {"data": {"n_search": 3, "n_eval": 5}}


def test_an_override_that_does_not_validate_names_the_field():
    with pytest.raises(ConfigError, match="n_eval"):
        build_config(RunConfig, None, {"data": {"n_eval": 0}})
