"""Stage: the refusal direction [A24] (METHOD.md §2).

Candidates are differences of means at every layer × post-instruction position, the last 20%
of layers dropped as Arditi et al. count them. Each is screened on the validation split,
cheapest filter first: induce (mean refusal score of the harmless prompts with it added at its
layer; must exceed a threshold; only the blocks above the layer run, from a cached stream),
KL (harmless next-token distribution, ablated everywhere vs clean; must stay small) and bypass
(mean refusal score of the harmful prompts with it ablated everywhere; lower is better, the
ranking key). A candidate a filter rejects is not measured further, which leaves the choice
what the whole grid measured would give. Many candidates share each forward pass, one per row.
When no candidate passes both filters the choice relaxes them and says so loudly, and the
chosen direction is also measured ablated at fewer layers, around its own (the field's usual
alternatives), for the evaluation to compare.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from refusal_lens import activations
from refusal_lens.activations import model_inputs
from refusal_lens.interventions import ActivationAddition, DirectionalAblation, intervene
from refusal_lens.interventions.files import load_direction, save_direction
from refusal_lens.models import ChatModel
from refusal_lens.pipeline.config import DirectionConfig
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.prefix_cache import PrefixCache, build_prefix_caches, last_logits_from_cache
from refusal_lens.progress import make_progress
from refusal_lens.report import ReportSection, img, save_figure, subplots, table
from refusal_lens.scoring import last_position_logits, next_token_kl, refusal_score_from_logits

DIRECTION_FILE = "direction.safetensors"  # in the stage folder, copied into the run folder
PASSED = "induce+kl"
SIMILAR_LENGTH = 0.9  # a forward pass holds prompts at least this fraction as long as its longest


class ScoredCandidate(BaseModel):
    layer: int = Field(description="the layer whose residual the difference of means was taken at")
    position: int = Field(description="the prompt position, counted from the right (-1 = last prompt token)")
    bypass: float | None = Field(description="mean refusal score of the harmful val prompts with the candidate "
                                             "ablated at every layer (lower is better); null: not measured, a "
                                             "filter had rejected the candidate")
    induce: float = Field(description="mean refusal score of the harmless val prompts with the candidate "
                                      "added at `layer`")
    kl: float | None = Field(description="harmless next-token KL, ablated vs clean; null: not measured, the "
                                          "candidate did not induce refusal")
    induces: bool = Field(description="`induce` > `direction.induce_threshold`")
    low_kl: bool = Field(description="`kl` < `direction.kl_threshold`")
    chosen: bool = Field(description="this candidate is the direction")


class AblationAlternative(BaseModel):
    method: str = Field(description="its name in the evaluation (`directional_ablation_A-B`)")
    layers: list[int] = Field(description="the blocks it ablates at (input, attention and MLP outputs)")
    bypass: float = Field(description="mean refusal score of the harmful val prompts")
    kl: float = Field(description="harmless next-token KL, ablated vs clean")
    low_kl: bool = Field(description="`kl` < `direction.kl_threshold`")


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
    n_candidates: int = Field(description="candidates screened (layers x positions)")
    n_passing: int = Field(description="candidates that passed both filters")
    fallback: str | None = Field(description="null when the direction passed both filters; otherwise the "
                                             "warning printed and shown in the report")
    alternatives: list[AblationAlternative] = Field(description=(
        "only with a fallback: the direction ablated at the blocks within w of its layer, for each w of "
        "`direction.fallback_windows` (evaluated too)"))
    norm: float = Field(description="the direction's L2 norm (it is not normalised)")
    table: list[ScoredCandidate] = Field(description="every candidate screened")


# --- candidates ---------------------------------------------------------------------------
def mean_residuals(chat_model: ChatModel, instructions: Sequence[str], positions: Sequence[int],
                   batch_size: int | None, description: str) -> torch.Tensor:
    """Mean residual ``[n_layers, len(positions), d_model]`` over the instructions."""
    return activations.mean_residuals(chat_model, instructions, range(chat_model.n_layers), positions,
                                      batch_size=batch_size, progress=description)


def candidate_directions(chat_model: ChatModel, harmful: Sequence[str], harmless: Sequence[str],
                         positions: Sequence[int], batch_size: int) -> torch.Tensor:
    return (mean_residuals(chat_model, harmful, positions, batch_size, "harmful means")
            - mean_residuals(chat_model, harmless, positions, batch_size, "harmless means"))


def candidate_grid(chat_model: ChatModel, config: DirectionConfig) -> tuple[list[int], list[int]]:
    """``(positions, layers)`` of the candidates.

    Arditi et al. drop layer ``l >= int(n_layers * 0.8)``, where their layer ``l`` is the
    input of block ``l`` (their layer 0 is the embeddings): our layer ``L``, the output of
    block ``L``, is their ``L + 1``.
    """
    if config.variant == "last_position":
        return [-1], [chat_model.check_layer(config.layer)]
    positions = (list(range(-chat_model.n_post_instruction_tokens, 0))
                 if config.positions == "post_instruction" else list(config.positions))
    layers = (range(chat_model.n_layers) if config.layers == "all"
              else sorted({chat_model.check_layer(L) for L in config.layers}))
    cutoff = int(chat_model.n_layers * config.max_layer_fraction)
    kept = [L for L in layers if L + 1 < cutoff]
    if not kept:
        raise ValueError(f"No candidate layer is below the cutoff (layers L with L+1 >= {cutoff} = "
                         f"int({chat_model.n_layers} x {config.max_layer_fraction}) are dropped): choose lower "
                         "direction.layers or raise direction.max_layer_fraction.")
    return positions, kept


# --- scoring many candidates per forward pass ---------------------------------------------
def _token_ids(chat_model: ChatModel, instructions: Sequence[str]) -> list[list[int]]:
    batch = chat_model.tokenize(list(instructions))
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())]


def row_passes(lengths: Sequence[int], n_candidates: int,
               rows_per_forward: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(candidate indices, prompt indices)`` of each forward pass, covering every (candidate,
    prompt) row once: longest prompts first, a pass holding at most ``rows_per_forward`` rows of
    prompts at least ``SIMILAR_LENGTH`` as long as its longest, so little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda p: -lengths[p])
    passes: list[list[tuple[int, int]]] = []
    for prompt in order:
        for candidate in range(n_candidates):
            current = passes[-1] if passes else None
            if (current is None or len(current) == rows_per_forward
                    or lengths[prompt] < SIMILAR_LENGTH * lengths[current[0][1]]):
                passes.append(current := [])
            current.append((candidate, prompt))
    return [(torch.tensor([c for c, _ in rows]), torch.tensor([p for _, p in rows])) for rows in passes]


class CandidateScorer:
    """Bypass, induce and KL of many candidate directions (METHOD.md §2), on the val prompts.

    A row is one (candidate, prompt) pair under that candidate's own intervention (one
    direction or vector per row); ``rows_per_forward`` rows share a forward pass.
    """

    def __init__(self, chat_model: ChatModel, harmful: Sequence[str], harmless: Sequence[str],
                 cache_layers: Sequence[int], rows_per_forward: int):
        self.chat_model, self.rows_per_forward = chat_model, rows_per_forward
        self.harmful, self.harmless = _token_ids(chat_model, harmful), _token_ids(chat_model, harmless)
        self.clean_logits = last_position_logits(chat_model, harmless)
        # the harmless stream entering each candidate layer, for induce
        self.caches = build_prefix_caches(chat_model, harmless, cache_layers) if cache_layers else {}

    def _refusal(self, logits: torch.Tensor, _prompts: torch.Tensor) -> torch.Tensor:
        return refusal_score_from_logits(logits, self.chat_model.refusal_token_ids)

    def _kl(self, logits: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return next_token_kl(self.clean_logits[prompts.to(self.clean_logits.device)], logits)

    def bypass(self, vectors: torch.Tensor, layers: Sequence[int] | None = None, advance=None) -> torch.Tensor:
        """Mean refusal score of the harmful prompts, each vector ablated (at ``layers``, default all)."""
        return self._ablated(self.harmful, vectors, layers, self._refusal, advance)

    def kl(self, vectors: torch.Tensor, layers: Sequence[int] | None = None, advance=None) -> torch.Tensor:
        """Mean next-token KL of the harmless prompts, clean vs each vector ablated."""
        return self._ablated(self.harmless, vectors, layers, self._kl, advance)

    @torch.no_grad()
    def _ablated(self, prompts: list[list[int]], vectors: torch.Tensor, layers: Sequence[int] | None,
                 reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], advance) -> torch.Tensor:
        values = torch.empty(len(vectors), len(prompts))
        for candidates, rows in row_passes([len(p) for p in prompts], len(vectors), self.rows_per_forward):
            batch = self.chat_model.pad([prompts[p] for p in rows.tolist()])
            ablation = DirectionalAblation(vectors[candidates].to(self.chat_model.device), layers)
            with intervene(self.chat_model, ablation):
                logits = self.chat_model.model(**model_inputs(batch), use_cache=False, logits_to_keep=1).logits[:, -1]
            values[candidates, rows] = reduce(logits, rows).float().cpu()
            if advance:
                advance(len(rows))
        return values.mean(1)

    @torch.no_grad()
    def induce(self, vectors: torch.Tensor, layer: int, advance=None) -> torch.Tensor:
        """Mean refusal score of the harmless prompts, each vector added at ``layer``: only the
        blocks from ``layer`` on run, from the cached stream entering it."""
        cache = self.caches[layer]
        lengths = cache.attention_mask.sum(1).tolist()
        values = torch.empty(len(vectors), len(lengths))
        for candidates, rows in row_passes(lengths, len(vectors), self.rows_per_forward):
            width = max(lengths[p] for p in rows.tolist())  # left-padded: the columns before are padding
            index = rows.to(cache.hidden.device)
            trimmed = PrefixCache(layer, cache.hidden.index_select(0, index)[:, -width:],
                                  cache.attention_mask.index_select(0, index)[:, -width:])
            add = ActivationAddition(vectors[candidates].to(self.chat_model.device), layer)
            logits = last_logits_from_cache(self.chat_model, trimmed, torch.arange(len(rows)), [add])
            values[candidates, rows] = self._refusal(logits, rows).float().cpu()
            if advance:
                advance(len(rows))
        return values.mean(1)


# --- screening and choosing ---------------------------------------------------------------
def _induces(row: dict, config: DirectionConfig) -> bool:
    return row["induce"] is not None and row["induce"] > config.induce_threshold


def _low_kl(row: dict, config: DirectionConfig) -> bool:
    return row["kl"] is not None and row["kl"] < config.kl_threshold


def filter_tiers(config: DirectionConfig) -> tuple[tuple[str, Callable[[dict], bool]], ...]:
    """The selection filters, strictest first: a tier is used only when no candidate passes the one before."""
    return ((PASSED, lambda r: _induces(r, config) and _low_kl(r, config)),
            (f"induce only (no candidate that induced refusal had KL < {config.kl_threshold})",
             lambda r: _induces(r, config)),
            ("none (no candidate induced refusal)", lambda r: True))


def screen(scorer: CandidateScorer, means: torch.Tensor, layers: Sequence[int], positions: Sequence[int],
           config: DirectionConfig, measure_all: bool = False) -> list[dict]:
    """The candidate table: induce of every candidate; KL of those that induce refusal; bypass of
    those the chosen filter tier keeps (``measure_all``: everything of every candidate)."""
    measure_all = measure_all or config.score_every_candidate
    table = [{"layer": L, "position": position, "bypass": None, "induce": None, "kl": None, "_j": j}
             for L in layers for j, position in enumerate(positions)]
    n_harmless, n_harmful = len(scorer.harmless), len(scorer.harmful)
    with make_progress() as progress:
        task = progress.add_task("direction grid: induce", total=len(table) * n_harmless)
        for L in layers:
            induced = scorer.induce(means[L], L, lambda n: progress.advance(task, n))
            for row, value in zip([r for r in table if r["layer"] == L], induced.tolist()):
                row["induce"] = value
        _measure(progress, "KL", scorer.kl, means, n_harmless,
                 [r for r in table if measure_all or _induces(r, config)], "kl")
        if measure_all:
            wanted = table
        else:  # the strictest tier any candidate passes (the last one keeps everything)
            keep = next(keep for _, keep in filter_tiers(config) if any(keep(r) for r in table))
            wanted = [r for r in table if keep(r)]
        _measure(progress, "bypass", scorer.bypass, means, n_harmful, wanted, "bypass")
    for row in table:
        del row["_j"]
    return table


def _measure(progress, what: str, score, means: torch.Tensor, n_prompts: int, rows: list[dict], key: str) -> None:
    rows = [r for r in rows if r[key] is None]
    if not rows:
        return
    task = progress.add_task(f"direction grid: {what}", total=len(rows) * n_prompts)
    vectors = torch.stack([means[r["layer"], r["_j"]] for r in rows])
    for row, value in zip(rows, score(vectors, advance=lambda n: progress.advance(task, n)).tolist()):
        row[key] = value


def choose(table: list[dict], config: DirectionConfig) -> tuple[dict, str]:
    """Lowest bypass among candidates passing both filters; if none does, relax KL, then induce.

    Which filters the choice satisfied is returned (and reported), never hidden.
    """
    for row in table:
        row["induces"] = _induces(row, config)
        row["low_kl"] = _low_kl(row, config)
    for filters, keep in filter_tiers(config):
        eligible = [row for row in table if keep(row)]
        if eligible:
            if any(row["bypass"] is None for row in eligible):
                raise RuntimeError(f"Bypass was not measured for every candidate of the tier {filters!r}.")
            best = min(eligible, key=lambda row: math.inf if math.isnan(row["bypass"]) else row["bypass"])
            for row in table:
                row["chosen"] = row is best
            return best, filters
    raise ValueError("No direction candidates were evaluated: check direction.layers and max_layer_fraction.")


def fallback_alternatives(scorer: CandidateScorer, direction: torch.Tensor, layer: int, n_layers: int,
                          config: DirectionConfig) -> list[AblationAlternative]:
    """The direction ablated only at the blocks within ``w`` of ``layer``, for each fallback window."""
    windows = sorted({(max(0, layer - w), min(n_layers - 1, layer + w)) for w in config.fallback_windows})
    alternatives = []
    for low, high in windows:
        if (low, high) == (0, n_layers - 1):
            continue  # that is the direction itself
        blocks = list(range(low, high + 1))
        bypass = scorer.bypass(direction[None], blocks).item()
        kl = scorer.kl(direction[None], blocks).item()
        name = f"directional_ablation_{low}" if low == high else f"directional_ablation_{low}-{high}"
        alternatives.append(AblationAlternative(method=name, layers=blocks, bypass=bypass, kl=kl,
                                                low_kl=kl < config.kl_threshold))
    return alternatives


def fallback_warning(result_filters: str, n_candidates: int, config: DirectionConfig) -> str:
    return (f"No candidate of the {n_candidates} passed both filters (induce > {config.induce_threshold} and "
            f"KL < {config.kl_threshold}): the direction was chosen with the filters relaxed to "
            f"'{result_filters}'. Its ablation may damage harmless answers; the same direction ablated at fewer "
            "layers around its own is measured below and evaluated too.")


def find_direction(chat_model: ChatModel, harmful_train: Sequence[str], harmless_train: Sequence[str],
                   harmful_val: Sequence[str], harmless_val: Sequence[str], config: DirectionConfig,
                   batch_size: int = 16) -> tuple[torch.Tensor, RefusalDirection]:
    """The direction ``[d_model]`` (a difference of means, not normalised) and how it was chosen."""
    positions, layers = candidate_grid(chat_model, config)
    means = candidate_directions(chat_model, harmful_train, harmless_train, positions, batch_size)
    scorer = CandidateScorer(chat_model, harmful_val, harmless_val, layers, config.rows_per_forward)
    fixed = config.variant == "last_position"
    table = screen(scorer, means, layers, positions, config, measure_all=fixed)
    best, filters = choose(table, config)
    direction = means[best["layer"], positions.index(best["position"])].clone()
    if best["kl"] is None:  # no candidate induced refusal: KL was not needed to choose, but is reported
        best["kl"] = scorer.kl(direction[None]).item()
        best["low_kl"] = _low_kl(best, config)
    fallback, alternatives = None, []
    if filters != PASSED and not fixed:
        fallback = fallback_warning(filters, len(table), config)
        alternatives = fallback_alternatives(scorer, direction, best["layer"], chat_model.n_layers, config)
    return direction, RefusalDirection(
        layer=best["layer"], position=best["position"], bypass=best["bypass"], induce=best["induce"],
        kl=best["kl"], variant=config.variant, filters=filters, n_candidates=len(table),
        n_passing=sum(r["induces"] and r["low_kl"] for r in table), fallback=fallback,
        alternatives=alternatives, norm=float(direction.norm()), table=table)


# --- the stage ----------------------------------------------------------------------------
def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> RefusalDirection:
    sets: PromptSets = inputs["prompt_sets"]
    direction, found = find_direction(ctx.chat_model, texts(sets.harmful_train), texts(sets.harmless_train),
                                      texts(sets.harmful_val), texts(sets.harmless_val), ctx.config.direction,
                                      ctx.config.batch_size)
    if found.fallback:
        ctx.console.print(f"[bold red]Warning:[/] {found.fallback}")
    save_direction(out.path / DIRECTION_FILE, direction, found.layer,
                   {"position": str(found.position), "variant": found.variant})
    return found


def load_vector(stage_dir: StageDir) -> torch.Tensor:
    """The direction saved by this stage."""
    return load_direction(stage_dir.path / DIRECTION_FILE).direction


def summary(result: RefusalDirection) -> list[str]:
    lines = [(f"Refusal direction: layer {result.layer}, position {result.position} "
              f"(bypass {result.bypass:+.2f}, induce {result.induce:+.2f}, KL {result.kl:.3f}; "
              f"{result.n_passing} of {result.n_candidates} candidates passed both filters)")]
    if result.fallback:
        lines.append(f"[bold red]Warning:[/] {result.fallback}")
        lines += [f"  {a.method}: bypass {a.bypass:+.2f}, KL {a.kl:.3f}" for a in result.alternatives]
    return lines


def fig_grid(result: RefusalDirection, folder: Path) -> str | None:
    """Bypass, induce and KL of every candidate against its layer, one line per position (the chosen one starred)."""
    if len(result.table) < 2:
        return None
    fig, axes = subplots(ncols=3, figsize=(13, 3.6), sharex=True)
    positions = sorted({r.position for r in result.table})
    for ax, key, label in zip(axes, ("bypass", "induce", "kl"),
                              ("bypass: harmful refusal score, ablated", "induce: harmless refusal score, added",
                               "KL on harmless, ablated")):
        for position in positions:
            rows = sorted((r for r in result.table if r.position == position), key=lambda r: r.layer)
            values = [math.nan if getattr(r, key) is None else getattr(r, key) for r in rows]
            ax.plot([r.layer for r in rows], values, marker=".", label=f"position {position}")
        ax.plot([result.layer], [getattr(result, key)], "k*", markersize=12, label="chosen")
        ax.set_xlabel("layer (block output)")
        ax.set_title(label, fontsize=9)
    if any(r.kl and r.kl > 0 for r in result.table):
        axes[2].set_yscale("log")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[0].legend(fontsize=7)
    return save_figure(fig, folder, "direction_grid")


def report(result: RefusalDirection, inputs: Inputs, figures: Path) -> list[ReportSection]:
    body = (f"<p>Layer {result.layer}, position {result.position} ({html.escape(result.variant)}): "
            f"bypass {result.bypass:+.2f}, induce {result.induce:+.2f}, KL {result.kl:.3f}; "
            f"filters passed: {html.escape(result.filters)}; {result.n_passing} of {result.n_candidates} "
            "candidates passed both filters (a candidate a filter rejected is not measured further: gaps in "
            "the lines).</p>")
    if result.fallback:
        body += f'<p style="color:#b00;font-weight:bold">Warning: {html.escape(result.fallback)}</p>'
        body += table([[a.method, f"{a.bypass:+.2f}", f"{a.kl:.3f}", "yes" if a.low_kl else "no"]
                       for a in result.alternatives], ["alternative", "bypass", "KL", "KL below threshold"])
    return [ReportSection("Refusal direction", body + img(fig_grid(result, figures), "direction grid"))]


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
