"""``docs/RESULTS.md`` and ``docs/CONFIG.md``, generated from the stages' result models and ``RunConfig``.

    python -m refusal_lens.pipeline.docs [DOCS_FOLDER]     # rewrites both (default: ./docs)

A test compares the committed files with what this renders, so they cannot drift.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from refusal_lens.pipeline import stages
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.stage import SCHEMA_VERSION

RESULTS_INTRO = f"""\
# `results.json` (schema version {SCHEMA_VERSION})

Written by `refusal-lens run` / `demo` (and the stage commands) into the run folder, with
`report.html`, `figures/`, `direction.safetensors`, `feature_sets/*.json` and
`stages/<stage>-<key>/`: each stage's artifact folder, holding its `result.json` (the same
result as below), `done.json` (its cost and provenance) and its own files (the direction's
`direction.safetensors`, the search's `checkpoint.json`). The key hashes the schema version,
the config sections the stage depends on and the keys of the stages it reads.

This file is generated from the result models (`python -m refusal_lens.pipeline.docs`); a test
fails when it differs from them. Features are `[layer, index]` pairs (`tuple[int, int]`).

| key | content |
| --- | --- |
| `schema_version` | `{SCHEMA_VERSION}` |
| `stages` | stage name → its artifact folder |
| one key per stage run | that stage's result (below) |
| `cost` | stage → {{`forward_passes`, `rows`, `wall_time_s`}}: every forward of the model, generation steps included |
| `config`, `versions`, `created` | the full run configuration, package versions, UTC time |
"""

CONFIG_INTRO = """\
# Run configuration

`refusal-lens run --config FILE.toml` validates the file into `RunConfig`
(`src/refusal_lens/pipeline/config.py`); CLI flags (`--model`, `--saes`, `--device`, `--dtype`,
`--device-map`, `--seed`, `--n-search`, `--n-eval`, `--top-k`, `--tau`) override it. Unknown keys
are errors. Examples: `configs/organism.toml`, `configs/gemma-2-2b-it.toml`,
`configs/llama-3.1-8b-instruct.toml`. `refusal-lens demo` uses `demo_config()`.

Splits: discovery stages use train (direction means, search, FM) and val (direction
selection) prompts; the evaluation uses test prompts only, and the run fails if any
evaluation prompt appears among the discovery prompts.

This file is generated from `RunConfig` (`python -m refusal_lens.pipeline.docs`); a test fails
when it differs from it.
"""


def type_name(annotation: Any) -> str:
    """A type as the docs write it: ``list[ScoredPrompt]``, ``float | null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in nested_models(arg)]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    own = model.__dict__.get("__doc__")
    return _cell(own) if own else ""


def field_table(model: type[BaseModel], with_defaults: bool = False) -> str:
    header = "| field | type | default | description |\n| --- | --- | --- | --- |" if with_defaults else \
        "| field | type | description |\n| --- | --- | --- |"
    rows = []
    for name, info in model.model_fields.items():
        cells = [f"`{name}`", f"`{_cell(type_name(info.annotation))}`"]
        if with_defaults:
            cells.append(f"`{_cell(json.dumps(_default(info)))}`" if _default(info) is not PydanticUndefined else "")
        cells.append(_cell(info.description or ""))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, *rows])


def _default(info) -> Any:
    if info.default_factory is not None:
        value = info.default_factory()
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return info.default


def models_section(model: type[BaseModel], level: str, seen: set) -> list[str]:
    """``model``'s table, then those of the models its fields use, each once."""
    parts = [field_table(model)]
    for info in model.model_fields.values():
        for nested in nested_models(info.annotation):
            if nested not in seen:
                seen.add(nested)
                doc = _doc(nested)
                parts += [f"{level} `{nested.__name__}`", *([doc] if doc else []),
                          *models_section(nested, level, seen)]
    return parts


def _stage_purpose(stage) -> str:
    doc = sys.modules[stage.compute.__module__].__doc__ or ""
    return _cell(doc.strip().split("\n\n")[0].removeprefix("Stage: "))


def results_markdown() -> str:
    loaded = [stages.load(name) for name in stages.NAMES]
    rows = [f"| `{s.name}` | {_stage_purpose(s)} | {', '.join(f'`{r}`' for r in s.reads) or '–'} | "
            f"{', '.join(f'`{c}`' for c in s.config_sections) or '–'} | `{s.result.__name__}` |" for s in loaded]
    parts = [RESULTS_INTRO, "## Stages, in the order they run\n",
             "| stage | what it does | reads | config sections | result |\n| --- | --- | --- | --- | --- |\n"
             + "\n".join(rows) + "\n"]
    seen: set = set()
    for stage in loaded:
        seen.add(stage.result)
        doc = _doc(stage.result)
        parts += [f"## `{stage.name}`: `{stage.result.__name__}`\n", *([doc + "\n"] if doc else []),
                  "\n\n".join(models_section(stage.result, "####", seen)) + "\n"]
    return "\n".join(parts)


def config_markdown() -> str:
    parts = [CONFIG_INTRO]
    top_level = []
    for name, info in RunConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            doc = _doc(info.annotation)
            parts += [f"## `{name}`: {_cell(info.description or '')}\n", *([doc + "\n"] if doc else []),
                      field_table(info.annotation, with_defaults=True) + "\n"]
        else:
            top_level.append(name)
    rows = [f"| `{n}` | `{_cell(type_name(RunConfig.model_fields[n].annotation))}` | "
            f"`{json.dumps(_default(RunConfig.model_fields[n]))}` | {_cell(RunConfig.model_fields[n].description or '')} |"
            for n in top_level]
    parts += ["## Top level\n", "| field | type | default | description |\n| --- | --- | --- | --- |\n"
              + "\n".join(rows) + "\n"]
    return "\n".join(parts)


def main(folder: str = "docs") -> None:
    Path(folder, "RESULTS.md").write_text(results_markdown())
    Path(folder, "CONFIG.md").write_text(config_markdown())


if __name__ == "__main__":
    main(*sys.argv[1:])
