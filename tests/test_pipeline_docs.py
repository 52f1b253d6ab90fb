"""docs/RESULTS.md and docs/CONFIG.md are what the result models and RunConfig render; the stage table is sound."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from refusal_lens.pipeline import stages
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.docs import config_markdown, nested_models, results_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
REGENERATE = "regenerate it: python -m refusal_lens.pipeline.docs"


def test_results_md_is_generated_from_the_result_models():
    assert (DOCS / "RESULTS.md").read_text() == results_markdown(), REGENERATE


def test_config_md_is_generated_from_run_config():
    assert (DOCS / "CONFIG.md").read_text() == config_markdown(), REGENERATE


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for info in model.model_fields.values():
        for nested in nested_models(info.annotation):
            found += _models(nested)
    return found


@pytest.mark.parametrize("name", stages.NAMES)
def test_every_stage_is_declared_in_its_module_and_every_result_field_is_described(name):
    stage = stages.load(name)
    assert stage.name == name and set(stage.reads) <= set(stages.NAMES[:stages.NAMES.index(name)])
    assert set(stage.config_sections) <= set(RunConfig.model_fields)
    for model in _models(stage.result):
        undocumented = [f for f, info in model.model_fields.items() if not info.description]
        assert not undocumented, f"{model.__name__}: give {undocumented} a Field(description=...)"


def test_until_an_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown stage 'nope'"):
        stages.names_until("nope")
