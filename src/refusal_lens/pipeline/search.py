"""Stage: greedy filtering of candidate features to minimal ablation sets (METHOD.md §4.2).

A *track* is one greedy search: one seed over one prompt (per-prompt sets) or over the
whole prompt set (a shared set). All live tracks advance together: each step evaluates
every track's next tentative set, for every prompt it covers, in batched forward passes
that start from the cached residual below the first edited layer.

Step of a track, with ``S`` the current ablation set (initially every candidate ``C``)
and ``T`` the next test (a block of ``b`` features, or one feature of a block that failed):
ablate ``S \\ T``; if the prompts stay flipped and the relative change of P(refusal) is
below ``tau``, drop ``T`` for good; otherwise, if ``T`` was a block, queue its members one
by one. What remains is minimal with respect to block and single removals.

With ``search.cost = "harmless_kl"`` the stage adds *cheap* tracks (``cheap/seed<s>``) over the
same prompts, where capability cost is an objective: the candidates are ordered by their
firing rate on harmless training prompts (costliest first, the seed breaking ties), and a
test whose removal keeps the prompts flipped *and lowers the mean next-token KL on those
harmless prompts* is dropped even when P(refusal) moves by more than ``tau``. A feature then
stays only if the flip needs it, or if it matters for P(refusal) and costs nothing. The
paper's tracks run unchanged beside them. The cheap tracks may search under their own edit
(``search.cheap_positions``, ``search.cheap_scale``: a clamp-multiply at some positions
only); their flips and their cost are then both measured under it, the evaluation applies
``minimal_cheap`` with it, and each step still scores every track together (one batch of
forward passes per edit).

The stage saves the tracks (``checkpoint.json``) after the first step, then at most every
``CHECKPOINT_EVERY_S`` seconds, and after the last: a killed search resumes from there. Its result combines each prompt's and the shared tracks over seeds.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from refusal_lens import distributed
from refusal_lens.interventions import (
    FeatureIntervention,
    FeatureKey,
    FeatureOp,
    PositionScope,
    ScopedFeatureIntervention,
)
from refusal_lens.interventions.positions import check_scope
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import run_batched
from refusal_lens.pipeline.candidates import Candidates
from refusal_lens.pipeline.prompt_sets import PromptSets, texts
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.pipeline.targeted import scale_op
from refusal_lens.prefix_cache import PrefixCache, build_prefix_cache, last_logits_from_cache
from refusal_lens.progress import make_progress
from refusal_lens.report import ReportSection, img, save_figure, subplots
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_score_from_logits
from refusal_lens.targeting import HarmlessActivity, harmless_activity, next_token_kl

CHECKPOINT = "checkpoint.json"
# 300 tracks over 640 candidates make ~17 MB of JSON, seconds of host time: not after every step
CHECKPOINT_EVERY_S = 30.0
DEFAULT_ROWS = 64  # (prompt, feature set) rows a forward pass on the CPU


@dataclass
class Track:
    name: str
    seed: int
    prompts: list[int]                 # indices into the prompt set
    flip_fraction: float               # share of `targets` that must stay flipped
    current: list[FeatureKey]          # the ablation set S
    queue: list[list[FeatureKey]] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)   # prompts flipped by ablating all of C
    p_refusal: float = 1.0             # mean P(refusal) over targets with S ablated
    status: str = "running"            # running | done | not_flippable
    steps: int = 0
    cheap: bool = False                # capability cost is an objective (see the module's docstring)
    kl: float | None = None            # cheap tracks: mean harmless next-token KL with S edited (their edit)

    def to_json(self) -> dict:
        return {"name": self.name, "seed": self.seed, "prompts": self.prompts, "status": self.status,
                "steps": self.steps, "p_refusal": self.p_refusal, "targets": self.targets,
                # (layer, feature) tuples: JSON writes them as the lists track_from_json reads
                "flip_fraction": self.flip_fraction, "features": sorted(self.current),
                "queue": [list(test) for test in self.queue], "cheap": self.cheap, "kl": self.kl}


@dataclass
class Evaluation:
    scores: torch.Tensor      # refusal score per prompt of the track
    p_refusal: torch.Tensor   # P(refusal tokens) per prompt


class SetEvaluator:
    """Refusal scores of many (prompt, ablation set) pairs, ``rows_per_forward`` per forward pass
    (None: as many as fit the GPU, ``DEFAULT_ROWS`` on the CPU); in a data-parallel run the
    pairs are split over the processes and every process gets every score. ``scope``: the
    positions the edit acts at (``interventions/positions.py``)."""

    def __init__(self, chat_model: ChatModel, saes: SAESet, cache: PrefixCache, op: FeatureOp,
                 rows_per_forward: int | None = None, universe: Sequence[FeatureKey] | None = None,
                 scope: PositionScope = "all"):
        if check_scope(scope) == "generated":
            raise ValueError("A search scores the last prompt position, which a generated-only edit never "
                             "touches: search with positions all, prompt or post_instruction.")
        self.chat_model, self.saes, self.cache, self.op, self.scope = chat_model, saes, cache, op, scope
        self.rows_per_forward = rows_per_forward
        self.universe = universe  # every set is a subset: slices are built once and shared
        self.forward_passes = 0
        self.rows = 0

    def _chunk_logits(self, chunk: Sequence[tuple[int, Sequence[FeatureKey]]]) -> torch.Tensor:
        rows = torch.tensor([prompt for prompt, _ in chunk])
        sets = [features for _, features in chunk]
        interventions = [self._edit(sets)] if any(sets) else []
        logits = last_logits_from_cache(self.chat_model, self.cache, rows, interventions).float()
        self.forward_passes += 1
        self.rows += len(chunk)
        return logits

    def _edit(self, sets: list[Sequence[FeatureKey]]) -> FeatureIntervention:
        if self.scope == "all":
            return FeatureIntervention.for_rows(self.saes, sets, self.op, universe=self.universe)
        return ScopedFeatureIntervention.for_rows(self.saes, sets, self.op, universe=self.universe, scope=self.scope)

    def logits(self, pairs: Sequence[tuple[int, Sequence[FeatureKey]]]) -> list[torch.Tensor]:
        """Last-position logits (float32) of the pairs, one chunk at a time, in this process (the
        cheap search's harmless prompts are few; every process computes them all)."""
        return run_batched(self.chat_model, "set_evaluation", list(pairs), self._chunk_logits,
                           batch_size=self.rows_per_forward, default=DEFAULT_ROWS, shard=False,
                           tokens=lambda part: self.cache.hidden.shape[1])

    def __call__(self, pairs: Sequence[tuple[int, Sequence[FeatureKey]]]) -> tuple[torch.Tensor, torch.Tensor]:
        def evaluate(chunk: list[tuple[int, Sequence[FeatureKey]]]) -> torch.Tensor:
            logits = self._chunk_logits(chunk)
            return refusal_score_from_logits(logits, self.chat_model.refusal_token_ids).cpu()

        scores = run_batched(self.chat_model, "set_evaluation", list(pairs), evaluate,
                             batch_size=self.rows_per_forward, default=DEFAULT_ROWS,
                             tokens=lambda part: self.cache.hidden.shape[1])
        if not scores:  # e.g. a resumed search: every track already past its first test
            return torch.empty(0), torch.empty(0)
        score = torch.cat(scores)
        return score, torch.sigmoid(score)  # score is the log-odds of P(refusal)


class HarmlessKL:
    """Mean next-token KL (last prompt position, base vs edited) over harmless training prompts,
    of many feature sets, from a prefix cache of those prompts. ``base``: the unedited logits,
    when another ``HarmlessKL`` over the same cache has them."""

    def __init__(self, evaluate: SetEvaluator, base: torch.Tensor | None = None):
        self.evaluate = evaluate
        self.n_prompts = evaluate.cache.hidden.shape[0]
        self.base = base if base is not None else torch.cat(evaluate.logits([(p, []) for p in range(self.n_prompts)]))

    def __call__(self, sets: Sequence[Sequence[FeatureKey]]) -> list[float]:
        pairs = [(p, s) for s in sets for p in range(self.n_prompts)]
        logits = torch.cat(list(self.evaluate.logits(pairs))) if pairs else torch.empty(0)
        kl = next_token_kl(self.base.repeat(len(sets), 1), logits) if pairs else logits
        return kl.view(len(sets), self.n_prompts).mean(1).tolist() if sets else []


def _blocks(features: Sequence[FeatureKey], size: int, seed: int,
            cost: Mapping[FeatureKey, float] | None = None) -> list[list[FeatureKey]]:
    """Blocks in a seeded random order; with ``cost``, costliest first (the seed breaks ties)."""
    order = sorted(features)
    random.Random(seed).shuffle(order)
    if cost is not None:
        order.sort(key=lambda f: -cost[f])  # stable: ties keep the seeded order
    return [order[i:i + size] for i in range(0, len(order), size)]


def make_tracks(n_prompts: int, candidates: Sequence[FeatureKey], seeds: Sequence[int], *,
                per_prompt: bool, shared: bool, shared_flip_fraction: float,
                per_prompt_limit: int | None = None,
                cheap_candidates: Sequence[FeatureKey] | None = None) -> list[Track]:
    """The paper's tracks, and cheap shared tracks from ``cheap_candidates`` when given."""
    tracks = []
    own = range(min(n_prompts, per_prompt_limit or n_prompts))
    for seed in seeds:
        if per_prompt:
            tracks += [Track(f"prompt{p}/seed{seed}", seed, [p], 1.0, list(candidates)) for p in own]
        if shared:
            tracks.append(Track(f"shared/seed{seed}", seed, list(range(n_prompts)), shared_flip_fraction,
                                list(candidates)))
        if cheap_candidates is not None:
            tracks.append(Track(f"cheap/seed{seed}", seed, list(range(n_prompts)), shared_flip_fraction,
                                list(cheap_candidates), cheap=True))
    return tracks


def _evaluate_tracks(evaluate: SetEvaluator, tracks: list[Track], sets: list[list[FeatureKey]],
                     cheap_evaluate: SetEvaluator | None = None) -> list[Evaluation]:
    """Each track's set scored on its prompts, in one call of each evaluator: ``evaluate`` for
    every track, or, with ``cheap_evaluate``, for the paper's tracks and it for the cheap ones."""
    groups = [(evaluate, list(range(len(tracks))))]
    if cheap_evaluate is not None:
        groups = [(evaluate, [j for j, t in enumerate(tracks) if not t.cheap]),
                  (cheap_evaluate, [j for j, t in enumerate(tracks) if t.cheap])]
    out: list[Evaluation | None] = [None] * len(tracks)
    for evaluator, own in groups:
        if not own:
            continue
        scores, probs = evaluator([(p, sets[j]) for j in own for p in tracks[j].prompts])
        offset = 0
        for j in own:
            n = len(tracks[j].prompts)
            out[j] = Evaluation(scores[offset:offset + n], probs[offset:offset + n])
            offset += n
    return out


def _without(current: list[FeatureKey], test: list[FeatureKey]) -> list[FeatureKey]:
    drop = set(test)
    return [f for f in current if f not in drop]


MIN_KL_DROP = 1e-4  # a cheaper set must lower the harmless KL by more than float noise


def _accepts(track: Track, result: Evaluation, tau: float, kl_new: float | None = None) -> tuple[bool, float]:
    """Whether removing the test keeps the track flipped with a small change of P(refusal) or,
    on a cheap track, with a lower harmless KL."""
    index = [track.prompts.index(p) for p in track.targets]
    flipped = (result.scores[index] < 0).float().mean().item()
    p_new = result.p_refusal[index].mean().item()
    relative_change = (p_new - track.p_refusal) / max(track.p_refusal, 1e-12)
    cheaper = kl_new is not None and track.kl is not None and kl_new < track.kl - MIN_KL_DROP
    return flipped >= track.flip_fraction - 1e-9 and (relative_change < tau or cheaper), p_new


def _costs(harmless_kl: HarmlessKL | None, tracks: list[Track], sets: list[list[FeatureKey]]) -> list[float | None]:
    """The harmless KL of each cheap track's set (None for the others)."""
    cheap = [j for j, t in enumerate(tracks) if t.cheap]
    if not cheap:
        return [None] * len(tracks)
    if harmless_kl is None:
        raise ValueError("Cheap tracks need harmless prompts to measure their cost on.")
    values = dict(zip(cheap, harmless_kl([sets[j] for j in cheap])))
    return [values.get(j) for j in range(len(tracks))]


def run_greedy(evaluate: SetEvaluator, tracks: list[Track], *, block_size: int, tau: float,
               on_step: Callable[[list[Track]], None] | None = None, harmless_kl: HarmlessKL | None = None,
               cost: Mapping[FeatureKey, float] | None = None,
               cheap_evaluate: SetEvaluator | None = None) -> list[Track]:
    """Advance every track to a minimal set. ``on_step`` sees the tracks after each step.

    Cheap tracks need ``harmless_kl`` (their cost, under their edit) and ``cost`` (each
    candidate's firing rate on harmless prompts, which orders their blocks); ``cheap_evaluate``
    scores them under their own edit (default: ``evaluate``'s).
    """
    # a. ablating all candidates must flip the track's prompts
    fresh = [t for t in tracks if t.status == "running" and not t.targets]
    kls = _costs(harmless_kl, fresh, [t.current for t in fresh])
    results = _evaluate_tracks(evaluate, fresh, [t.current for t in fresh], cheap_evaluate)
    for track, result, kl in zip(fresh, results, kls):
        flipped = [p for p, s in zip(track.prompts, result.scores.tolist()) if s < 0]
        if not flipped or len(flipped) < track.flip_fraction * len(track.prompts) * 0.5:
            track.status = "not_flippable"
            continue
        track.targets = flipped
        index = [track.prompts.index(p) for p in flipped]
        track.p_refusal = result.p_refusal[index].mean().item()
        track.kl = kl
        track.queue = _blocks(track.current, block_size, track.seed, cost if track.cheap else None)
    # b. blocks, then the members of blocks that could not go
    while True:
        live = [t for t in tracks if t.status == "running" and t.queue]
        for track in tracks:
            if track.status == "running" and not track.queue and track.targets:
                track.status = "done"
        if not live:
            break
        tests = [t.queue.pop(0) for t in live]
        trial_sets = [_without(t.current, test) for t, test in zip(live, tests)]
        kls = _costs(harmless_kl, live, trial_sets)
        results = _evaluate_tracks(evaluate, live, trial_sets, cheap_evaluate)
        for track, test, trial, result, kl in zip(live, tests, trial_sets, results, kls):
            track.steps += 1
            accepted, p_new = _accepts(track, result, tau, kl)
            if accepted:
                track.current, track.p_refusal, track.kl = trial, p_new, kl
            elif len(test) > 1:
                track.queue[:0] = [[f] for f in test]
        if on_step is not None:
            on_step(tracks)
    return tracks


@dataclass
class SearchOutcome:
    tracks: list[Track]
    forward_passes: int
    rows: int
    wall_time_s: float
    activity: HarmlessActivity | None = None              # the candidates' harmless firing (cheap tracks)
    final_kl: dict[str, float] = field(default_factory=dict)  # track name → harmless KL of its final set
    n_cost_prompts: int = 0
    n_cheap_candidates: int = 0


@dataclass
class CostModel:
    """What the cheap tracks need: the candidates' harmless firing, the harmless KL under the
    paper's edit and under theirs, and the search prompts scored under theirs."""

    activity: HarmlessActivity
    paper_kl: HarmlessKL
    cheap_kl: HarmlessKL                  # ``paper_kl`` itself when the cheap tracks' edit is the paper's
    cheap_evaluate: SetEvaluator | None   # None when the cheap tracks' edit is the paper's

    def evaluators(self) -> list[SetEvaluator]:
        return list({id(e): e for e in (self.paper_kl.evaluate, self.cheap_kl.evaluate)}.values())


def _cost_model(evaluator: Callable[..., SetEvaluator], chat_model: ChatModel, saes: SAESet,
                harmless: Sequence[str], candidates: Sequence[FeatureKey], search_cache: PrefixCache,
                op: FeatureOp, cheap_op: FeatureOp, cheap_scope: PositionScope) -> CostModel:
    activity = harmless_activity(chat_model, saes, candidates, harmless)
    cache = build_prefix_cache(chat_model, harmless, search_cache.start)
    paper_kl = HarmlessKL(evaluator(cache, op))
    if cheap_op == op and cheap_scope == "all":
        return CostModel(activity, paper_kl, paper_kl, None)
    cheap_kl = HarmlessKL(evaluator(cache, cheap_op, cheap_scope), base=paper_kl.base)
    return CostModel(activity, paper_kl, cheap_kl, evaluator(search_cache, cheap_op, cheap_scope))


def _final_kl(tracks: Sequence[Track], costs: CostModel) -> dict[str, float]:
    """Track name → harmless KL of its final set, under its own edit (shared and cheap tracks)."""
    final = {}
    for kl, kind in ((costs.paper_kl, [t for t in tracks if t.name.startswith("shared")]),
                     (costs.cheap_kl, [t for t in tracks if t.cheap])):
        finished = [t for t in kind if t.status == "done"]
        if finished:
            final.update(zip([t.name for t in finished], kl([t.current for t in finished])))
    return final


def _loop_cost(sharded: Sequence[SetEvaluator], local: Sequence[SetEvaluator]) -> tuple[int, int]:
    """Forward passes and rows of the whole run: ``sharded`` evaluators split their rows over the
    processes of a data-parallel run, ``local`` ones (the harmless KL) compute all of theirs in each."""
    counts = torch.tensor([sum(e.forward_passes for e in sharded), sum(e.rows for e in sharded)])
    if distributed.active():
        counts = distributed.all_reduce_sum(counts)
    passes, rows = counts.tolist()
    return passes + sum(e.forward_passes for e in local), rows + sum(e.rows for e in local)


def greedy_minimal_sets(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str],
                        candidates: Sequence[FeatureKey], *, seeds: Sequence[int] = (0, 1, 2),
                        block_size: int = 5, tau: float = 0.1, per_prompt: bool = True, shared: bool = True,
                        shared_flip_fraction: float = 0.9, per_prompt_limit: int | None = None,
                        rows_per_forward: int | None = None,
                        op: FeatureOp | None = None, tracks: list[Track] | None = None,
                        on_step: Callable[[list[Track]], None] | None = None,
                        harmless: Sequence[str] = (), cheap: bool = False,
                        max_harmless_firing: float | None = None, cheap_op: FeatureOp | None = None,
                        cheap_scope: PositionScope = "all") -> SearchOutcome:
    """Minimal ablation sets for each prompt and/or shared by all, for every seed.

    With ``cheap``, cheap shared tracks too (the module's docstring), their cost measured on
    ``harmless`` (training prompts, never evaluation ones); their candidates leave out those
    firing on more than ``max_harmless_firing`` of the harmless tokens; their edit is
    ``cheap_op`` (default ``op``) at the positions of ``cheap_scope``.
    Pass ``tracks`` (e.g. reloaded from a checkpoint) to resume a search.
    """
    started = time.perf_counter()
    op = op or FeatureOp("zero")
    cache = build_prefix_cache(chat_model, instructions, min(layer for layer, _ in candidates))

    def evaluator(prompts: PrefixCache, edit: FeatureOp, scope: PositionScope = "all") -> SetEvaluator:
        return SetEvaluator(chat_model, saes, prompts, edit, rows_per_forward, universe=candidates, scope=scope)

    evaluate = evaluator(cache, op)
    costs = None
    if cheap or any(t.cheap for t in tracks or ()):
        if not harmless:
            raise ValueError("A cheap search needs harmless training prompts to measure its cost on.")
        costs = _cost_model(evaluator, chat_model, saes, harmless, candidates, cache, op, cheap_op or op,
                            cheap_scope)
    cost = {key: costs.activity.cost(key) for key in candidates} if costs else None
    limit = 1.0 if max_harmless_firing is None else max_harmless_firing
    cheap_candidates = [key for key in candidates if cost[key] <= limit] if cost else None
    if tracks is None:
        tracks = make_tracks(len(instructions), candidates, seeds, per_prompt=per_prompt, shared=shared,
                             shared_flip_fraction=shared_flip_fraction, per_prompt_limit=per_prompt_limit,
                             cheap_candidates=cheap_candidates if cheap else None)
    sharded = [evaluate] + ([costs.cheap_evaluate] if costs and costs.cheap_evaluate else [])
    local = costs.evaluators() if costs else []
    with make_progress() as progress:
        task = progress.add_task(f"greedy search ({len(tracks)} tracks)", total=None)

        def step(ts: list[Track]) -> None:
            live = sum(t.status == "running" for t in ts)
            passes = sum(e.forward_passes for e in (*sharded, *local))
            progress.update(task, advance=1, description=f"greedy search: {live}/{len(ts)} tracks running, "
                                                         f"{passes} forward passes")
            if on_step is not None:
                on_step(ts)

        run_greedy(evaluate, tracks, block_size=block_size, tau=tau, on_step=step,
                   harmless_kl=costs.cheap_kl if costs else None, cost=cost,
                   cheap_evaluate=costs.cheap_evaluate if costs else None)
    final_kl = _final_kl(tracks, costs) if costs else {}
    passes, rows = _loop_cost(sharded, local)
    return SearchOutcome(tracks, passes, rows, time.perf_counter() - started,
                         costs.activity if costs else None, final_kl, len(harmless) if costs else 0,
                         len(cheap_candidates) if cheap_candidates is not None else 0)


def track_from_json(payload: dict) -> Track:
    """Rebuild a track saved by ``Track.to_json`` (a checkpoint resumes exactly where it stopped)."""
    return Track(payload["name"], payload["seed"], payload["prompts"], payload["flip_fraction"],
                 [tuple(f) for f in payload["features"]],
                 queue=[[tuple(f) for f in test] for test in payload["queue"]], status=payload["status"],
                 targets=payload["targets"], p_refusal=payload["p_refusal"], steps=payload["steps"],
                 cheap=payload.get("cheap", False), kl=payload.get("kl"))


def combine_seeds(sets: Sequence[Sequence[FeatureKey]]) -> tuple[list[FeatureKey], list[FeatureKey]]:
    """Intersection and union over seeds."""
    as_sets = [set(map(tuple, s)) for s in sets]
    if not as_sets:
        return [], []
    return sorted(set.intersection(*as_sets)), sorted(set.union(*as_sets))


# --- the stage ----------------------------------------------------------------------------
class SeedCombination(BaseModel):
    intersection: list[FeatureKey] = Field(description="features in the minimal set of every seed")
    union: list[FeatureKey] = Field(description="features in the minimal set of any seed")
    by_seed: dict[int, list[FeatureKey]] = Field(description="seed → its minimal set (finished tracks only)")


class PromptMinimalSet(SeedCombination):
    flippable: bool = Field(description="ablating every candidate flipped the prompt (for some seed)")


class SavedTrack(BaseModel):
    name: str = Field(description="`prompt<i>/seed<s>` or `shared/seed<s>`")
    seed: int = Field(description="orders the blocks")
    prompts: list[int] = Field(description="indices into `prompt_sets.harmful_search`")
    status: str = Field(description="`done` or `not_flippable`")
    steps: int = Field(description="tests made")
    p_refusal: float = Field(description="mean P(refusal) over `targets` with `features` ablated")
    targets: list[int] = Field(description="the prompts that ablating every candidate flipped")
    flip_fraction: float = Field(description="share of `targets` that must stay flipped")
    features: list[FeatureKey] = Field(description="the track's final set")
    cheap: bool = Field(False, description="a cheap track (`search.cost = \"harmless_kl\"`)")
    harmless_kl: float | None = Field(None, description="mean next-token KL of its final set on the cost prompts "
                                                        "(shared and cheap tracks, with `search.cost` set)")


class CandidateCost(BaseModel):
    layer: int = Field(description="the SAE's layer")
    feature: int = Field(description="the feature's index")
    firing_rate: float = Field(description="share of the harmless cost prompts' tokens where it is > 0")
    mean_activation: float = Field(description="its mean activation over those tokens")


class HarmlessCost(BaseModel):
    n_prompts: int = Field(description="harmless training prompts the cost is measured on (`search.cost_prompts`)")
    positions: PositionScope = Field("all", description="where the cheap tracks' edit acts (`search.cheap_positions`)")
    scale: float = Field(0.0, description="its clamp-multiply factor, 0 for zero-ablation (`search.cheap_scale`)")
    candidates: list[CandidateCost] = Field(description="every candidate's activity on them")
    n_cheap_candidates: int = Field(description="candidates of the cheap tracks (`search.max_harmless_firing`)")
    shared_kl: dict[int, float] = Field(description="seed → harmless KL of the paper's shared set")
    cheap_kl: dict[int, float] = Field(description="seed → harmless KL of the cheap set, under its edit")

    def edit(self, saes: SAESet, features: Sequence[FeatureKey]) -> FeatureIntervention:
        """The cheap tracks' edit of ``features``: what the evaluation applies ``minimal_cheap`` with."""
        if self.positions == "all":
            return FeatureIntervention(saes, features, scale_op(self.scale))
        return ScopedFeatureIntervention(saes, features, scale_op(self.scale), scope=self.positions)


class GreedyLoopCost(BaseModel):
    forward_passes: int = Field(description="batched forward passes of the greedy loop")
    rows: int = Field(description="(prompt, feature set) pairs evaluated")
    wall_time_s: float = Field(description="seconds the loop took (this run's part, after a resume)")


class MinimalSets(BaseModel):
    shared: SeedCombination = Field(description="the set shared by the search prompts (`search.shared`)")
    per_prompt: dict[str, PromptMinimalSet] = Field(description="prompt id → that prompt's own set "
                                                                "(`search.per_prompt`, first "
                                                                "`search.per_prompt_limit` prompts)")
    not_flippable: list[str] = Field(description="prompt ids whose candidates could not flip them")
    tracks: list[SavedTrack] = Field(description="every greedy search, as it ended")
    greedy_loop: GreedyLoopCost = Field(description="the cost of the greedy loop alone")
    cheap: SeedCombination | None = Field(None, description="the cheap shared set (`search.cost = "
                                                            "\"harmless_kl\"`), null otherwise")
    harmless_cost: HarmlessCost | None = Field(None, description="what the cheap tracks measured, null without them")

    def minimal_shared(self) -> list[FeatureKey]:
        """The shared set the later stages use: the intersection over seeds, or the union when that is empty."""
        return list(self.shared.intersection or self.shared.union)

    def minimal_cheap(self) -> list[FeatureKey]:
        """The cheap shared set (∩ seeds, or ∪ when that is empty); empty without cheap tracks."""
        return list(self.cheap.intersection or self.cheap.union) if self.cheap else []


def _combine(tracks: Sequence[Track]) -> dict:
    intersection, union = combine_seeds([t.current for t in tracks])
    return {"intersection": intersection, "union": union, "by_seed": {t.seed: sorted(t.current) for t in tracks}}


def minimal_sets(outcome: SearchOutcome, prompt_ids: Sequence[str], cheap_positions: PositionScope = "all",
                 cheap_scale: float = 0.0) -> MinimalSets:
    """Each prompt's and the shared finished tracks, combined over seeds; ``cheap_positions`` and
    ``cheap_scale`` record the cheap tracks' edit."""
    tracks = outcome.tracks
    per_prompt = {}
    for index, prompt_id in enumerate(prompt_ids):
        own = [t for t in tracks if t.prompts == [index] and t.name.startswith("prompt")]
        if own:
            flippable = [t for t in own if t.status == "done"]
            per_prompt[prompt_id] = PromptMinimalSet(**_combine(flippable), flippable=bool(flippable))
    shared = [t for t in tracks if t.name.startswith("shared") and t.status == "done"]
    cheap = [t for t in tracks if t.cheap and t.status == "done"]
    return MinimalSets(
        shared=SeedCombination(**_combine(shared)), per_prompt=per_prompt,
        not_flippable=[pid for pid, v in per_prompt.items() if not v.flippable],
        tracks=[SavedTrack.model_validate({**t.to_json(), "harmless_kl": outcome.final_kl.get(t.name)})
                for t in tracks],
        greedy_loop=GreedyLoopCost(forward_passes=outcome.forward_passes, rows=outcome.rows,
                                   wall_time_s=outcome.wall_time_s),
        cheap=SeedCombination(**_combine(cheap)) if any(t.cheap for t in tracks) else None,
        harmless_cost=(_harmless_cost(outcome, cheap_positions, cheap_scale) if outcome.activity is not None
                       else None))


def _harmless_cost(outcome: SearchOutcome, positions: PositionScope, scale: float) -> HarmlessCost:
    activity = outcome.activity
    by_kind = {kind: {t.seed: outcome.final_kl[t.name] for t in outcome.tracks
                      if t.name.startswith(kind) and t.name in outcome.final_kl} for kind in ("shared", "cheap")}
    cheap_track = next((t for t in outcome.tracks if t.cheap), None)
    return HarmlessCost(
        n_prompts=outcome.n_cost_prompts, positions=positions, scale=scale,
        candidates=[CandidateCost(layer=L, feature=i, firing_rate=float(activity.firing_rate[j]),
                                  mean_activation=float(activity.mean_activation[j]))
                    for j, (L, i) in enumerate(activity.keys)],
        n_cheap_candidates=outcome.n_cheap_candidates if cheap_track else 0,
        shared_kl=by_kind["shared"], cheap_kl=by_kind["cheap"])


class Checkpointer:
    """``on_step`` of the stage's search: saves the tracks after the first step, then when
    ``every_s`` seconds have passed since the last save, and after the step that leaves no
    test queued (so the last checkpoint is the search's final state, whatever the timing)."""

    def __init__(self, out: StageDir, every_s: float = CHECKPOINT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.out, self.every_s, self.clock = out, every_s, clock
        self.saved_at: float | None = None

    def __call__(self, tracks: list[Track]) -> None:
        last = not any(t.status == "running" and t.queue for t in tracks)
        if last or self.saved_at is None or self.clock() - self.saved_at >= self.every_s:
            self.out.save_json(CHECKPOINT, [t.to_json() for t in tracks], indent=None)
            self.saved_at = self.clock()


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> MinimalSets:
    config = ctx.config.search
    sets: PromptSets = inputs["prompt_sets"]
    prompts = sets.harmful_search
    candidates: Candidates = inputs["candidates"]
    checkpoint = out.path / CHECKPOINT
    tracks = [track_from_json(t) for t in out.load_json(CHECKPOINT)] if checkpoint.exists() else None
    if tracks:
        ctx.console.print(f"[dim]search: resuming from a checkpoint ({sum(t.status != 'running' for t in tracks)}"
                          f"/{len(tracks)} tracks finished)[/]")
    outcome = greedy_minimal_sets(
        ctx.chat_model, ctx.saes, texts(prompts), candidates.keys(), seeds=config.seeds,
        block_size=config.block_size, tau=config.tau, per_prompt=config.per_prompt, shared=config.shared,
        shared_flip_fraction=config.shared_flip_fraction, per_prompt_limit=config.per_prompt_limit,
        rows_per_forward=config.rows_per_forward,
        tracks=tracks, on_step=Checkpointer(out),
        harmless=texts(sets.harmless_train)[:config.cost_prompts], cheap=config.cost == "harmless_kl",
        max_harmless_firing=config.max_harmless_firing, cheap_op=scale_op(config.cheap_scale),
        cheap_scope=config.cheap_positions)
    return minimal_sets(outcome, [p.id for p in prompts], config.cheap_positions, config.cheap_scale)


def summary(result: MinimalSets) -> list[str]:
    lines = [(f"Minimal shared set: {len(result.shared.intersection)} features "
              f"(union over seeds {len(result.shared.union)})")]
    if result.cheap is not None:
        lines.append(f"Cheap shared set: {len(result.cheap.intersection)} features "
                     f"(union {len(result.cheap.union)}){_kl_note(result)}")
    return lines


def _kl_note(result: MinimalSets) -> str:
    cost = result.harmless_cost
    if cost is None or not cost.shared_kl or not cost.cheap_kl:
        return ""
    cheap, shared = (sum(kl.values()) / len(kl) for kl in (cost.cheap_kl, cost.shared_kl))
    edit = "" if cost.positions == "all" and cost.scale == 0 else (
        f" under its own edit ({'zero' if cost.scale == 0 else f'×{cost.scale:g}'} at {cost.positions} positions)")
    return (f"; harmless-train KL {cheap:.3f}{edit} vs {shared:.3f} for the paper's set (mean over seeds, "
            f"{cost.n_prompts} prompts)")


def fig_features_per_layer(result: MinimalSets, candidate_layers: list[int], folder: Path) -> str:
    fig, ax = subplots(figsize=(7, 3))
    for features, offset, label in ((result.shared.intersection, -0.2, "shared (∩ seeds)"),
                                    (result.shared.union, 0.2, "shared (∪ seeds)")):
        counts = Counter(layer for layer, _ in features)
        layers = sorted(counts)
        ax.bar([L + offset for L in layers], [counts[L] for L in layers], width=0.4, label=label)
    ax.set_xticks(candidate_layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("features")
    ax.legend(fontsize=8)
    ax.set_title("Minimal-set features per layer")
    return save_figure(fig, folder, "features_per_layer")


def report(result: MinimalSets, inputs: Inputs, figures: Path) -> list[ReportSection]:
    candidates: Candidates = inputs["candidates"]
    own = sorted(len(v.intersection) for v in result.per_prompt.values() if v.flippable)
    sizes = f"{own[0]}" if own and own[0] == own[-1] else f"{own[0]} to {own[-1]}" if own else ""
    per_prompt = f" Each prompt's own set (∩ seeds), for {len(own)} prompts: {sizes} features." if own else ""
    return [ReportSection("Minimal feature set", (
        f"<p>Shared (intersection over seeds): {len(result.shared.intersection)} features; union: "
        f"{len(result.shared.union)}, from {len(candidates.features)} candidates. Prompts not flippable with "
        f"these candidates: {len(result.not_flippable)}.{per_prompt}</p>"
        + (f"<p>Cheap shared set (capability cost as an objective, `search.cost`): {len(result.cheap.intersection)} "
           f"features (∩ seeds), {len(result.cheap.union)} (∪){_kl_note(result)}.</p>" if result.cheap else "")
        + img(fig_features_per_layer(result, candidates.layers(), figures), "features per layer")))]


def export(ctx: RunContext, result: MinimalSets, stage_dir: StageDir) -> None:
    for name, features in (("minimal_shared", result.shared.intersection),
                           ("minimal_shared_union", result.shared.union)):
        if features:
            ctx.export_feature_set(name, features)
    if result.minimal_cheap():  # with the edit the cheap tracks searched under
        cost = result.harmless_cost
        ctx.export_feature_set("minimal_cheap", result.minimal_cheap(), scale_op(cost.scale), positions=cost.positions)


STAGE = Stage(
    name="search",
    result=MinimalSets,
    compute=compute,
    reads=("prompt_sets", "candidates"),
    config_sections=("search",),
    summary=summary,
    report=report,
    export=export,
)
