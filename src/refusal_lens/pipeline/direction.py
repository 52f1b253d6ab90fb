"""Stage: the refusal direction [A24] (METHOD.md §2).

Candidates are differences of means at every layer × post-instruction position; each is
scored on the validation split by bypass (mean refusal score of harmful prompts with the
direction ablated everywhere; lower is better), induce (mean refusal score of harmless
prompts with it added at its layer; must exceed a threshold) and KL (harmless next-token
distribution, ablated vs clean; must stay small). Candidates from the last layers are dropped.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from refusal_lens import activations
from refusal_lens.interventions import ActivationAddition, DirectionalAblation
from refusal_lens.interventions.files import load_direction, save_direction
from refusal_lens.models import ChatModel
from refusal_lens.pipeline.config import DirectionConfig
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.prefix_cache import PrefixCache, build_prefix_caches, last_logits_from_cache
from refusal_lens.progress import make_progress
from refusal_lens.report import ReportSection
from refusal_lens.scoring import last_position_logits, refusal_score_from_logits

DIRECTION_FILE = "direction.safetensors"  # in the stage folder, copied into the run folder


class ScoredCandidate(BaseModel):
    layer: int = Field(description="the layer whose residual the difference of means was taken at")
    position: int = Field(description="the prompt position, counted from the right (-1 = last prompt token)")
    bypass: float = Field(description="mean refusal score of the harmful val prompts with the candidate "
                                      "ablated at every layer (lower is better)")
    induce: float = Field(description="mean refusal score of the harmless val prompts with the candidate "
                                      "added at `layer`")
    kl: float = Field(description="harmless next-token KL, ablated vs clean")
    induces: bool = Field(description="`induce` > `direction.induce_threshold`")
    low_kl: bool = Field(description="`kl` < `direction.kl_threshold`")
    chosen: bool = Field(description="this candidate is the direction")


class RefusalDirection(BaseModel):
    """The chosen difference of means; the vector itself is `direction.safetensors` in the run folder."""

    layer: int = Field(description="its layer")
    position: int = Field(description="its position, counted from the right (-1 = last prompt token)")
    bypass: float = Field(description="mean refusal score of the harmful val prompts under directional "
                                      "ablation (lower is better)")
    induce: float = Field(description="mean refusal score of the harmless val prompts with the direction "
                                      "added at `layer`")
    kl: float = Field(description="harmless next-token KL, ablated vs clean")
    variant: str = Field(description="`select` (every layer x position, chosen on val) or `last_position`")
    filters: str = Field(description="which selection filters the choice passed: `induce+kl`, or a relaxed "
                                     "tier, named")
    norm: float = Field(description="the direction's L2 norm (it is not normalised)")
    table: list[ScoredCandidate] = Field(description="every candidate evaluated")


def mean_residuals(chat_model: ChatModel, instructions: Sequence[str], positions: Sequence[int],
                   batch_size: int | None, description: str) -> torch.Tensor:
    """Mean residual ``[n_layers, len(positions), d_model]`` over the instructions."""
    return activations.mean_residuals(chat_model, instructions, range(chat_model.n_layers), positions,
                                      batch_size=batch_size, progress=description)


def candidate_directions(chat_model: ChatModel, harmful: Sequence[str], harmless: Sequence[str],
                         positions: Sequence[int], batch_size: int) -> torch.Tensor:
    return (mean_residuals(chat_model, harmful, positions, batch_size, "harmful means")
            - mean_residuals(chat_model, harmless, positions, batch_size, "harmless means"))


def _kl(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> float:
    p_log = clean_logits.float().log_softmax(-1)
    q_log = other_logits.float().log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean().item()


def score_candidate(chat_model: ChatModel, direction: torch.Tensor, layer: int, harmful_val: Sequence[str],
                    harmless_val: Sequence[str], harmless_clean_logits: torch.Tensor,
                    harmless_cache: PrefixCache | None = None) -> dict:
    """Bypass and KL under directional ablation (every layer: full forwards); induce under
    activation addition at ``layer``, from ``harmless_cache`` (the harmless residual entering
    ``layer``) when given, which skips the blocks below it."""
    ablate = DirectionalAblation(direction.to(chat_model.device))
    logits = last_position_logits(chat_model, [*harmful_val, *harmless_val], [ablate])
    n = len(harmful_val)
    refusal = chat_model.refusal_token_ids
    bypass = refusal_score_from_logits(logits[:n], refusal).mean().item()
    kl = _kl(harmless_clean_logits, logits[n:])
    add = ActivationAddition(direction.to(chat_model.device), layer)
    if harmless_cache is None:
        added = last_position_logits(chat_model, harmless_val, [add])
    else:
        added = last_logits_from_cache(chat_model, harmless_cache, torch.arange(len(harmless_val)), [add])
    induce = refusal_score_from_logits(added, refusal).mean().item()
    return {"bypass": bypass, "induce": induce, "kl": kl}


def find_direction(chat_model: ChatModel, harmful_train: Sequence[str], harmless_train: Sequence[str],
                   harmful_val: Sequence[str], harmless_val: Sequence[str], config: DirectionConfig,
                   batch_size: int = 16) -> tuple[torch.Tensor, RefusalDirection]:
    """The direction ``[d_model]`` (a difference of means, not normalised) and how it was chosen."""
    n_layers = chat_model.n_layers
    if config.variant == "last_position":
        positions, layers = [-1], [chat_model.check_layer(config.layer)]
    else:
        positions = (list(range(-chat_model.n_post_instruction_tokens, 0))
                     if config.positions == "post_instruction" else list(config.positions))
        layers = range(n_layers) if config.layers == "all" else [chat_model.check_layer(L) for L in config.layers]
        layers = [L for L in layers if L < config.max_layer_fraction * n_layers]
    means = candidate_directions(chat_model, harmful_train, harmless_train, positions, batch_size)
    clean = last_position_logits(chat_model, harmless_val)
    caches = build_prefix_caches(chat_model, harmless_val, layers)
    table = []
    with make_progress() as progress:
        task = progress.add_task("direction candidates", total=len(layers) * len(positions))
        for layer in layers:
            for j, position in enumerate(positions):
                scores = score_candidate(chat_model, means[layer, j], layer, harmful_val, harmless_val, clean,
                                         caches[layer])
                table.append({"layer": layer, "position": position, **scores})
                progress.advance(task)
    best, filters = choose(table, config)
    j = positions.index(best["position"])
    direction = means[best["layer"], j].clone()
    return direction, RefusalDirection(layer=best["layer"], position=best["position"], bypass=best["bypass"],
                                       induce=best["induce"], kl=best["kl"], variant=config.variant,
                                       filters=filters, norm=float(direction.norm()), table=table)


def choose(table: list[dict], config: DirectionConfig) -> tuple[dict, str]:
    """Lowest bypass among candidates passing both filters; if none does, relax KL, then induce.

    Which filters the choice satisfied is returned (and reported), never hidden.
    """
    for row in table:
        row["induces"] = row["induce"] > config.induce_threshold
        row["low_kl"] = row["kl"] < config.kl_threshold
    tiers = (("induce+kl", lambda r: r["induces"] and r["low_kl"]), ("induce only (no candidate had KL < "
             f"{config.kl_threshold})", lambda r: r["induces"]), ("none (no candidate induced refusal)", lambda r: True))
    for filters, keep in tiers:
        eligible = [row for row in table if keep(row)]
        if eligible:
            best = min(eligible, key=lambda row: row["bypass"])
            for row in table:
                row["chosen"] = row is best
            return best, filters
    raise ValueError("No direction candidates were evaluated: check direction.layers and max_layer_fraction.")


# --- the stage ----------------------------------------------------------------------------
def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> RefusalDirection:
    sets: PromptSets = inputs["prompt_sets"]
    direction, found = find_direction(ctx.chat_model, texts(sets.harmful_train), texts(sets.harmless_train),
                                      texts(sets.harmful_val), texts(sets.harmless_val), ctx.config.direction,
                                      ctx.config.batch_size)
    save_direction(out.path / DIRECTION_FILE, direction, found.layer,
                   {"position": str(found.position), "variant": found.variant})
    return found


def load_vector(stage_dir: StageDir) -> torch.Tensor:
    """The direction saved by this stage."""
    return load_direction(stage_dir.path / DIRECTION_FILE).direction


def summary(result: RefusalDirection) -> list[str]:
    return [f"Refusal direction: layer {result.layer}, position {result.position} "
            f"(bypass {result.bypass:+.2f}, induce {result.induce:+.2f}, KL {result.kl:.3f})"]


def report(result: RefusalDirection, inputs: Inputs, figures: Path) -> list[ReportSection]:
    return [ReportSection("Refusal direction", (
        f"<p>Layer {result.layer}, position {result.position} ({html.escape(result.variant)}): "
        f"bypass {result.bypass:+.2f}, induce {result.induce:+.2f}, KL {result.kl:.3f}; "
        f"filters passed: {html.escape(result.filters)}.</p>"))]


def export(ctx: RunContext, result: RefusalDirection, stage_dir: StageDir) -> None:
    shutil.copyfile(stage_dir.path / DIRECTION_FILE, ctx.out_dir / DIRECTION_FILE)


STAGE = Stage(
    name="direction",
    result=RefusalDirection,
    compute=compute,
    reads=("prompt_sets",),
    config_sections=("direction",),
    summary=summary,
    report=report,
    export=export,
)
