"""The pipeline's stages, in the order they run (METHOD.md §2, §4, §5).

    prompt_sets → direction → candidates → attribution → search → verification → dormant → interactions
    → evaluation → cards → categories → upstream → jailbreaks → probes

Each row names a module ``refusal_lens.pipeline.<name>`` whose ``STAGE`` says what the stage
reads, computes, returns and reports (``pipeline/stage.py``). Adding a stage is one new
module and one row here. This table imports nothing heavy, so the CLI can build its stage
commands from it without loading torch; ``load`` imports a stage's module when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from refusal_lens.pipeline.stage import Stage


@dataclass(frozen=True)
class StageRow:
    name: str
    command: bool = False  # worth running alone: `refusal-lens <name>` runs the pipeline up to it
    verb: str | None = None  # the command's name, where a verb reads better than the stage's name

    @property
    def command_name(self) -> str:
        return self.verb or self.name


TABLE = (
    StageRow("prompt_sets"),
    StageRow("direction", command=True),
    StageRow("candidates", command=True),
    StageRow("attribution", command=True, verb="attribute"),
    StageRow("search", command=True),
    StageRow("verification"),
    StageRow("dormant"),
    StageRow("interactions", command=True),
    StageRow("evaluation"),
    StageRow("cards"),
    StageRow("categories", command=True),
    StageRow("upstream", command=True),
    StageRow("jailbreaks", command=True),
    StageRow("probes", command=True),
)
DEMO_UNTIL = "cards"  # `refusal-lens demo` stops here; the analyses after it: configs/organism-analyses.toml
NAMES = tuple(row.name for row in TABLE)


def names_until(until: str) -> tuple[str, ...]:
    """Every stage up to and including ``until``, in order."""
    if until not in NAMES:
        raise ValueError(f"Unknown stage {until!r}; stages: {', '.join(NAMES)}")
    return NAMES[:NAMES.index(until) + 1]


def load(name: str) -> Stage:
    """The ``STAGE`` of ``refusal_lens.pipeline.<name>``, checked against the table's order."""
    if name not in NAMES:
        raise ValueError(f"Unknown stage {name!r}; stages: {', '.join(NAMES)}")
    stage = import_module(f"{__package__}.{name}").STAGE
    earlier = NAMES[:NAMES.index(name)]
    if stage.name != name or not set(stage.reads) <= set(earlier):
        raise RuntimeError(f"Stage module {name} declares {stage.name!r} reading {stage.reads}; "
                           f"it must be named {name!r} and read only earlier stages ({', '.join(earlier)}).")
    return stage
