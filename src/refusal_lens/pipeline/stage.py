"""What a pipeline stage is: its inputs, its cache key, its compute, its typed result and its report.

A stage is one module ``refusal_lens.pipeline.<name>`` that ends with ``STAGE = Stage(...)``;
``pipeline/stages.py`` lists the stages in order and ``pipeline/run.py`` walks that list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from rich.console import Console, RenderableType

from refusal_lens.interventions import FeatureKey, FeatureOp
from refusal_lens.interventions.files import save_feature_set
from refusal_lens.models import ChatModel
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.store import ArtifactStore, StageDir
from refusal_lens.report import ReportSection
from refusal_lens.saes import SAESet

SCHEMA_VERSION = 2  # of results.json and of every stage's result.json; part of every artifact key

R = TypeVar("R", bound=BaseModel)


@dataclass
class RunContext:
    """What every stage may use: the config, the run folder, and the model and SAEs (loaded once, on first use)."""

    config: RunConfig
    out_dir: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))

    @cached_property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.out_dir)

    @cached_property
    def chat_model(self) -> ChatModel:
        self.console.print(f"Loading model [bold]{self.config.model.name}[/] ...")
        return self.config.model.load()

    def export_feature_set(self, name: str, features: Sequence[FeatureKey], op: FeatureOp = FeatureOp("zero"),
                           **file_fields) -> None:
        """``<run>/feature_sets/<name>.json``, which ``refusal-lens eval --intervention features:FILE`` reads
        (``file_fields``: a scope or condition, see ``save_feature_set``)."""
        save_feature_set(self.out_dir / "feature_sets" / f"{name}.json", list(features),
                         saes=self.config.saes.source, op=op, **file_fields)

    @cached_property
    def saes(self) -> SAESet:
        self.console.print(f"Loading SAEs [bold]{self.config.saes.source}[/] ...")
        return self.config.saes.load(self.chat_model)


@dataclass
class StageRun:
    """A stage computed or reused in this run: its folder and its result."""

    stage: Stage
    dir: StageDir
    result: BaseModel


class Inputs(Mapping[str, Any]):
    """The results of the stages a stage reads, by name; ``dir(name)`` for their other files."""

    def __init__(self, runs: Mapping[str, StageRun]):
        self._runs = dict(runs)

    def __getitem__(self, name: str) -> Any:
        return self._runs[name].result

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def dir(self, name: str) -> StageDir:
        return self._runs[name].dir


def _no_summary(result: BaseModel) -> list[RenderableType]:
    return []


def _no_report(result: BaseModel, inputs: Inputs, figures: Path) -> list[ReportSection]:
    return []


def _no_export(ctx: RunContext, result: BaseModel, stage_dir: StageDir) -> None:
    return None


@dataclass(frozen=True)
class Stage(Generic[R]):
    """One step of the pipeline.

    - ``reads``: the earlier stages whose results ``compute`` gets (as ``Inputs``);
    - ``config_sections``: the ``RunConfig`` fields the stage's own computation depends on.
      The artifact key hashes them with the keys of the stages read, so a section that only
      an earlier stage reads need not be repeated;
    - ``compute(ctx, inputs, out)``: the work; may write extra files (tensors, a checkpoint)
      into ``out`` and returns the typed ``result``, saved as ``out/result.json``;
    - ``summary(result)``: the lines the CLI prints at the end of a run;
    - ``report(result, inputs, figures)``: the stage's sections of ``report.html``;
    - ``export(ctx, result, stage_dir)``: files the stage puts in the run folder itself
      (the direction, feature-set files).
    """

    name: str
    result: type[R]
    compute: Callable[[RunContext, Inputs, StageDir], R]
    reads: tuple[str, ...] = ()
    config_sections: tuple[str, ...] = ()
    summary: Callable[[R], list[RenderableType]] = _no_summary
    report: Callable[[R, Inputs, Path], list[ReportSection]] = _no_report
    export: Callable[[RunContext, R, StageDir], None] = _no_export

    def key_part(self, config: RunConfig) -> dict:
        """What the artifact key hashes besides the stages read: the schema and the config sections."""
        part: dict = {"schema_version": SCHEMA_VERSION}
        for section in self.config_sections:
            value = getattr(config, section)
            part[section] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        return part

