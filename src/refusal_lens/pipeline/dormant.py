"""Stage: dormant ("hydra") features of the minimal sets (METHOD.md §4).

A member of a prompt's critical set is dormant when it is zero at every position read on the
clean prompt. We count them, test whether the jailbreak survives without them, and see which
wake up once the active members are ablated (self-repair).

Independently of the sets, we count every SAE feature (all of them, at every SAE layer) that
wakes up when a set's active members are ablated: zero at every position read on the clean
prompt, above ``dormant.wake_threshold`` with the ablation. Each batch reads its prompts twice
in one forward pass, clean rows and ablated rows, each ablated row with its own set
(``FeatureIntervention.for_rows``), and encodes every SAE layer above the lowest ablated one
(``read_features(all_active=...)``); a feature at or below that layer cannot change, as
features are read before the edit at their own layer. A dormant member can only come from a
candidate that wakes up, so the report names how many woken features were candidates, and
``dormant.search_top_k`` reruns the per-prompt search from larger candidate counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from refusal_lens.activations import read_features
from refusal_lens.batching import BatchTooLargeError
from refusal_lens.interventions import FeatureIntervention, FeatureKey
from refusal_lens.models import ChatModel
from refusal_lens.models.batches import longest_prompt, run_batched
from refusal_lens.pipeline.candidates import Candidates, rank_by_cosine
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.prompt_sets import PromptSets, ScoredPrompt, texts
from refusal_lens.pipeline.search import GreedyLoopCost, MinimalSets, greedy_minimal_sets, minimal_sets, track_from_json
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.progress import make_progress
from refusal_lens.report import ReportSection, img, number, percent, save_figure, subplots, table
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores

WAKE_BATCH = 8  # prompts a forward pass of the woken-feature reads on the CPU (two rows each)
POSITIONS = {"prompt": None, "last": [-1]}  # dormant.positions → read_features' positions


def analyse_dormant(chat_model: ChatModel, saes: SAESet, minimal: Sequence[FeatureKey],
                    instructions: Sequence[str], prompt_ids: Sequence[str],
                    positions: Sequence[int] | None = None) -> dict:
    """Each prompt's dormant members of ``minimal`` (zero at every position read, all prompt tokens
    by default), whether the jailbreak needs them, and which wake up once the others are ablated."""
    minimal = [tuple(f) for f in minimal]
    if not minimal:
        return {"n_features": 0, "per_prompt": {}}
    clean = read_features(chat_model, saes, instructions, minimal, reduce="max", positions=positions).values
    per_prompt = {}
    for row, (text, pid) in enumerate(zip(instructions, prompt_ids)):
        dormant = [f for f, a in zip(minimal, clean[row].tolist()) if a <= 0]
        active = [f for f in minimal if f not in set(dormant)]
        record = {"n_dormant": len(dormant), "n_active": len(active), "dormant": [list(f) for f in dormant]}
        full = refusal_scores(chat_model, [text], interventions=[FeatureIntervention(saes, minimal)])[0].item()
        record["score_full_set"] = full
        if dormant and active:
            without = refusal_scores(chat_model, [text], interventions=[FeatureIntervention(saes, active)])[0].item()
            record["score_without_dormant"] = without
            record["jailbreak_fails_without_dormant"] = full < 0 <= without
            woken = read_features(chat_model, saes, [text], dormant, reduce="max", positions=positions,
                                  interventions=[FeatureIntervention(saes, active)]).values[0]
            record["woke_up"] = [list(f) for f, a in zip(dormant, woken.tolist()) if a > 0]
        per_prompt[pid] = record
    dormant_everywhere = [list(f) for j, f in enumerate(minimal) if (clean[:, j] <= 0).all()]
    tested = [r for r in per_prompt.values() if "jailbreak_fails_without_dormant" in r]
    return {
        "n_features": len(minimal),
        "dormant_on_every_prompt": dormant_everywhere,
        "mean_dormant_per_prompt": sum(r["n_dormant"] for r in per_prompt.values()) / len(per_prompt),
        "fraction_jailbreak_fails_without_dormant":
            (sum(r["jailbreak_fails_without_dormant"] for r in tested) / len(tested)) if tested else None,
        "mean_woke_up": (sum(len(r["woke_up"]) for r in tested) / len(tested)) if tested else None,
        "per_prompt": per_prompt,
    }


# --- every SAE feature that wakes up ----------------------------------------------------------
@dataclass(frozen=True)
class WakeTest:
    """A prompt and the features ablated on it (a set's members active there)."""

    text: str
    ablated: tuple[FeatureKey, ...]


def woken_features(chat_model: ChatModel, saes: SAESet, tests: Sequence[WakeTest], *, threshold: float = 0.0,
                   positions: Sequence[int] | None = None,
                   batch_size: int | None = None) -> list[dict[FeatureKey, float]]:
    """For each test, the SAE features (every feature of every SAE layer above the lowest ablated
    one) that are zero at every position read on the clean prompt and whose largest activation
    with ``ablated`` zero-ablated exceeds ``threshold``: ``{(layer, feature): that activation}``.

    A batch of ``n`` tests is one forward pass of ``2n`` rows: the clean prompts, then the same
    prompts each with its own set ablated. Deterministic (no sampling)."""
    tests = list(tests)
    if any(not t.ablated for t in tests):
        raise ValueError("A wake test needs at least one feature to ablate.")
    if not tests:
        return []
    lowest = min(layer for t in tests for layer, _ in t.ablated)
    layers = [layer for layer in saes.layers if layer > lowest]
    if not layers:  # nothing above the ablation: no feature can change
        return [{} for _ in tests]

    def run(chunk: list[WakeTest]) -> list[list[list[float]]]:
        n = len(chunk)
        edit = FeatureIntervention.for_rows(saes, [[] for _ in chunk] + [list(t.ablated) for t in chunk])
        try:
            read = read_features(chat_model, saes, [t.text for t in chunk] * 2, all_active=layers,
                                 positions=positions, reduce="max", interventions=[edit], batch_size=2 * n)
        except BatchTooLargeError as error:  # rows are paired per chunk: let run_batched halve the chunk
            raise torch.OutOfMemoryError(str(error)) from None
        clean, ablated = read.values[:n], read.values[n:]
        woke = (clean <= 0) & (ablated > threshold)
        return [[[*read.keys[j], float(ablated[b, j])] for j in woke[b].nonzero().flatten().tolist()]
                for b in range(n)]

    found = run_batched(chat_model, "dormant_wake", tests, run, batch_size=batch_size, default=WAKE_BATCH,
                        tokens=lambda part: longest_prompt(chat_model, [t.text for t in part]),
                        progress="woken features")
    return [{(int(layer), int(feature)): value for layer, feature, value in item} for item in found]


def wake_tests(records: dict[str, dict], sets: dict[str, Sequence[FeatureKey]],
               prompts: dict[str, str]) -> tuple[list[str], list[WakeTest]]:
    """The prompts with an active member, and their tests: each set's members minus its dormant ones."""
    ids, tests = [], []
    for pid, record in records.items():
        dormant = {tuple(f) for f in record["dormant"]}
        active = tuple(tuple(f) for f in sets[pid] if tuple(f) not in dormant)
        if active:
            ids.append(pid)
            tests.append(WakeTest(prompts[pid], active))
    return ids, tests


# --- the stage ----------------------------------------------------------------------------
class DormantOnPrompt(BaseModel):
    n_dormant: int = Field(description="members of the set zero at every position read on the clean prompt")
    n_active: int = Field(description="the other members")
    dormant: list[FeatureKey] = Field(description="the dormant members")
    score_full_set: float = Field(description="refusal score with the whole set ablated")
    score_without_dormant: float | None = Field(
        None, description="refusal score with only the active members ablated (when there are both kinds)")
    jailbreak_fails_without_dormant: bool | None = Field(
        None, description="the whole set flips the prompt (score < 0) and the active members alone do not")
    woke_up: list[FeatureKey] | None = Field(
        None, description="dormant members that fire once the active members are ablated (self-repair)")


class DormantSet(BaseModel):
    n_features: int = Field(description="size of the set analysed")
    dormant_on_every_prompt: list[FeatureKey] = Field(
        default_factory=list, description="members that fire on none of the prompts")
    mean_dormant_per_prompt: float | None = Field(None, description="mean `n_dormant` over the prompts")
    fraction_jailbreak_fails_without_dormant: float | None = Field(
        None, description="share of the prompts with both kinds of member where the jailbreak needs the "
                          "dormant ones; null when no prompt has both")
    mean_woke_up: float | None = Field(None, description="mean number of members woken up, over those prompts")
    per_prompt: dict[str, DormantOnPrompt] = Field(default_factory=dict, description="prompt id → its analysis")

    def n_tested(self) -> int:
        return sum(r.jailbreak_fails_without_dormant is not None for r in self.per_prompt.values())


class DormantCount(BaseModel):
    n_sets: int = Field(description="(prompt, set) pairs analysed: each prompt with the set it was analysed with")
    n_members: int = Field(description="members over those pairs (a set's size, once per prompt)")
    n_dormant: int = Field(description="members zero at every position read on their prompt")
    n_prompts_with_dormant: int = Field(description="prompts with at least one dormant member")
    n_needed: int = Field(description="prompts whose jailbreak fails without their dormant members")


class WokenFeature(BaseModel):
    layer: int = Field(description="the SAE's layer")
    feature: int = Field(description="the feature's index")
    n_prompts: int = Field(description="prompts on which it woke up")
    mean_activation: float = Field(description="its mean (over those prompts) largest activation once woken")
    candidate: bool = Field(description="among the candidates the sets were searched from")
    member: bool = Field(description="a (dormant) member of the set it woke up under, on some prompt")


class WokenLayer(BaseModel):
    layer: int = Field(description="the SAE's layer")
    n_features: int = Field(description="the SAE's width: every feature there was checked")
    can_wake: bool = Field(description="above the lowest ablated layer (a feature at or below it cannot change: "
                                       "it is read before the edit at its own layer)")
    n_woken: int = Field(description="distinct features that woke up on some prompt")
    mean_per_prompt: float | None = Field(description="features woken per prompt, on average; null without prompts")


class WokenFeatures(BaseModel):
    n_prompts: int = Field(description="prompts whose set had active members, ablated together")
    lowest_ablated_layer: int | None = Field(description="the lowest layer of an ablated member; null without one")
    per_layer: list[WokenLayer] = Field(description="every SAE layer of the run")
    n_woken: int = Field(description="distinct features woken up, over layers and prompts")
    mean_per_prompt: float | None = Field(description="features woken per prompt, on average")
    n_woken_candidates: int = Field(description="woken features among the candidates (a dormant member can only "
                                                "be one of these)")
    n_woken_members: int = Field(description="woken features that are members of their prompt's set")
    top: list[WokenFeature] = Field(description="the most often woken (`dormant.top_woken`), most prompts first, "
                                                "then highest mean activation")


class SetsAnalysis(BaseModel):
    name: str = Field(description="`shared`, `per_prompt` (the search stage's sets) or `per_prompt_top_k<K>` "
                                  "(`dormant.search_top_k`)")
    top_k: int = Field(description="candidates per SAE layer the sets were searched from")
    n_candidates: int = Field(description="candidates in all")
    count: DormantCount = Field(description="members zero on their prompt")
    woken: WokenFeatures = Field(description="every SAE feature that wakes up once the active members are ablated")

    @property
    def label(self) -> str:
        if self.name == "shared":
            return "shared set"
        return "per-prompt sets" + (f", top {self.top_k}" if self.name != "per_prompt" else "")


class CandidateCountSearch(BaseModel):
    top_k: int = Field(description="candidates per SAE layer (one of `dormant.search_top_k`)")
    n_candidates: int = Field(description="candidates in all")
    n_prompts: int = Field(description="search prompts searched (`dormant.search_prompts`)")
    sets: dict[str, list[FeatureKey]] = Field(description="prompt id → its minimal set (∩ seeds), flippable "
                                                          "prompts only")
    not_flippable: list[str] = Field(description="prompt ids that ablating every candidate did not flip")
    per_prompt: dict[str, DormantOnPrompt] = Field(description="prompt id → its set's dormant members")
    greedy_loop: GreedyLoopCost = Field(description="the cost of this search's greedy loop")


class DormantAnalysis(BaseModel):
    shared: DormantSet = Field(description="the shared minimal set (∩ seeds, or ∪ when that is empty) on "
                                           "every search prompt")
    per_prompt_sets: dict[str, DormantOnPrompt] = Field(description="prompt id → its own set (∩ seeds) on it")
    positions: str = Field(description="where features were read (`dormant.positions`)")
    wake_threshold: float = Field(description="`dormant.wake_threshold`")
    sae_layers: dict[int, int] = Field(description="SAE layer → its width")
    analyses: list[SetsAnalysis] = Field(description="dormant members and woken features of each kind of set: "
                                                     "shared, per prompt, per prompt at each `dormant.search_top_k`")
    candidate_counts: list[CandidateCountSearch] = Field(
        default_factory=list, description="the per-prompt searches at `dormant.search_top_k` candidates per layer")

    def n_dormant(self) -> int:
        return sum(a.count.n_dormant for a in self.analyses)


def count_dormant(records: dict[str, dict]) -> DormantCount:
    return DormantCount(n_sets=len(records), n_members=sum(r["n_dormant"] + r["n_active"] for r in records.values()),
                        n_dormant=sum(r["n_dormant"] for r in records.values()),
                        n_prompts_with_dormant=sum(r["n_dormant"] > 0 for r in records.values()),
                        n_needed=sum(bool(r.get("jailbreak_fails_without_dormant")) for r in records.values()))


def summarise_woken(found: Sequence[dict[FeatureKey, float]], tests: Sequence[WakeTest],
                    sets: Sequence[Iterable[FeatureKey]], widths: dict[int, int], candidates: set[FeatureKey],
                    top_n: int) -> WokenFeatures:
    """Per layer and per feature, what ``woken_features`` found on each test (``sets[j]``: test j's whole set)."""
    lowest = min((layer for t in tests for layer, _ in t.ablated), default=None)
    values: dict[FeatureKey, list[float]] = defaultdict(list)
    members = set()
    for woke, own in zip(found, sets):
        own = {tuple(f) for f in own}
        for key, value in woke.items():
            values[key].append(value)
            if key in own:
                members.add(key)
    n = len(tests)
    per_layer = []
    for layer, width in sorted(widths.items()):
        here = [k for k in values if k[0] == layer]
        per_layer.append(WokenLayer(layer=layer, n_features=width, can_wake=lowest is not None and layer > lowest,
                                    n_woken=len(here),
                                    mean_per_prompt=sum(len(values[k]) for k in here) / n if n else None))
    ranked = sorted(values, key=lambda k: (-len(values[k]), -sum(values[k]) / len(values[k]), k))
    return WokenFeatures(
        n_prompts=n, lowest_ablated_layer=lowest, per_layer=per_layer, n_woken=len(values),
        mean_per_prompt=sum(len(w) for w in found) / n if n else None,
        n_woken_candidates=sum(k in candidates for k in values), n_woken_members=len(members),
        top=[WokenFeature(layer=k[0], feature=k[1], n_prompts=len(values[k]),
                          mean_activation=sum(values[k]) / len(values[k]), candidate=k in candidates,
                          member=k in members) for k in ranked[:top_n]])


def analyse_sets(ctx: RunContext, name: str, top_k: int, candidates: Sequence[FeatureKey], records: dict[str, dict],
                 sets: dict[str, Sequence[FeatureKey]], prompts: dict[str, str]) -> SetsAnalysis:
    """The dormant count of ``records`` and the features woken on their prompts."""
    config = ctx.config.dormant
    ids, tests = wake_tests(records, sets, prompts)
    found = woken_features(ctx.chat_model, ctx.saes, tests, threshold=config.wake_threshold,
                           positions=POSITIONS[config.positions], batch_size=config.batch_size)
    widths = {layer: int(ctx.saes[layer].W_dec.shape[0]) for layer in ctx.saes.layers}
    woken = summarise_woken(found, tests, [sets[pid] for pid in ids], widths, {tuple(f) for f in candidates},
                            config.top_woken)
    return SetsAnalysis(name=name, top_k=top_k, n_candidates=len(candidates), count=count_dormant(records),
                        woken=woken)


def own_sets_dormant(ctx: RunContext, sets: dict[str, list[FeatureKey]], prompts: dict[str, str]) -> dict[str, dict]:
    """Each prompt's own set analysed on it, with a progress bar."""
    positions = POSITIONS[ctx.config.dormant.positions]
    records = {}
    with make_progress() as progress:
        task = progress.add_task("dormant members of per-prompt sets", total=len(sets))
        for pid, own in sets.items():
            records[pid] = analyse_dormant(ctx.chat_model, ctx.saes, own, [prompts[pid]], [pid],
                                           positions)["per_prompt"][pid]
            progress.advance(task)
    return records


def search_at_candidate_count(ctx: RunContext, out: StageDir, top_k: int, direction: torch.Tensor,
                              prompts: Sequence[ScoredPrompt]) -> tuple[CandidateCountSearch, SetsAnalysis]:
    """The per-prompt search from the top ``top_k`` decoder rows per layer, and its sets' dormant
    members and woken features. The search resumes from its checkpoint and is kept once done."""
    config, settings = ctx.config.dormant, ctx.config.search
    ranked = rank_by_cosine(ctx.saes, direction, top_k, ctx.config.candidates.layers)
    keys = [(c["layer"], c["feature"]) for c in ranked]
    chosen = list(prompts[:config.search_prompts or settings.per_prompt_limit or len(prompts)])
    done, checkpoint = f"search_top_k{top_k}.json", f"search_top_k{top_k}_checkpoint.json"
    if (out.path / done).exists():
        found = MinimalSets.model_validate(out.load_json(done))
    else:
        tracks = [track_from_json(t) for t in out.load_json(checkpoint)] if (out.path / checkpoint).exists() else None
        ctx.console.print(f"dormant: per-prompt search from the top {top_k} candidates per layer "
                          f"({len(keys)} candidates, {len(chosen)} prompts)")
        outcome = greedy_minimal_sets(
            ctx.chat_model, ctx.saes, texts(chosen), keys, seeds=settings.seeds, block_size=settings.block_size,
            tau=settings.tau, per_prompt=True, shared=False, rows_per_forward=settings.rows_per_forward,
            tracks=tracks, on_step=lambda ts: out.save_json(checkpoint, [t.to_json() for t in ts]))
        found = minimal_sets(outcome, [p.id for p in chosen])
        out.save_json(done, found.model_dump(mode="json"))
    text_of = {p.id: p.text for p in chosen}
    sets = {pid: list(s.intersection) for pid, s in found.per_prompt.items() if s.intersection}
    records = own_sets_dormant(ctx, sets, text_of)
    analysis = analyse_sets(ctx, f"per_prompt_top_k{top_k}", top_k, keys, records, sets, text_of)
    return CandidateCountSearch(top_k=top_k, n_candidates=len(keys), n_prompts=len(chosen), sets=sets,
                                not_flippable=found.not_flippable, per_prompt=records,
                                greedy_loop=found.greedy_loop), analysis


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> DormantAnalysis:
    config = ctx.config.dormant
    sets: PromptSets = inputs["prompt_sets"]
    search: MinimalSets = inputs["search"]
    candidates: Candidates = inputs["candidates"]
    prompts = sets.harmful_search
    text_of = {p.id: p.text for p in prompts}
    shared_set = search.minimal_shared()
    shared = analyse_dormant(ctx.chat_model, ctx.saes, shared_set, texts(prompts), [p.id for p in prompts],
                             POSITIONS[config.positions])
    own = {p.id: list(search.per_prompt[p.id].intersection) for p in prompts
           if p.id in search.per_prompt and search.per_prompt[p.id].intersection}
    per_prompt = own_sets_dormant(ctx, own, text_of)
    top_k = ctx.config.candidates.top_k
    analyses = [analyse_sets(ctx, "shared", top_k, candidates.keys(), shared["per_prompt"],
                             {pid: shared_set for pid in shared["per_prompt"]}, text_of),
                analyse_sets(ctx, "per_prompt", top_k, candidates.keys(), per_prompt, own, text_of)]
    searches = []
    if config.search_top_k:
        direction = load_vector(inputs.dir("direction"))
        for k in config.search_top_k:
            found, analysis = search_at_candidate_count(ctx, out, k, direction, prompts)
            searches.append(found)
            analyses.append(analysis)
    return DormantAnalysis(
        shared=DormantSet.model_validate(shared), per_prompt_sets=per_prompt, positions=config.positions,
        wake_threshold=config.wake_threshold,
        sae_layers={layer: int(ctx.saes[layer].W_dec.shape[0]) for layer in ctx.saes.layers},
        analyses=analyses, candidate_counts=searches)


def summary(result: DormantAnalysis) -> list[str]:
    lines = [f"Dormant in the shared set on every prompt: {len(result.shared.dormant_on_every_prompt)}"]
    for a in result.analyses:
        lines.append(f"Dormant ({a.label}): {a.count.n_dormant} of {a.count.n_members} members zero on their "
                     f"prompt; {a.woken.n_woken} SAE features woke up once the active members were ablated "
                     f"({a.woken.n_woken_candidates} of them candidates)")
    return lines


# --- the report -----------------------------------------------------------------------------
def _layers(layers: Iterable[int]) -> str:
    return ", ".join(str(layer) for layer in layers) or "none"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def woken_sentence(analysis: SetsAnalysis) -> str:
    """What ablating the active members did, in numbers."""
    woken = analysis.woken
    if not woken.n_prompts:
        return f"{analysis.label}: no prompt has an active member to ablate."
    readable = [w for w in woken.per_layer if w.can_wake]
    frozen = [w.layer for w in woken.per_layer if not w.can_wake]
    text = (f"{analysis.label}: ablating the active members on {_count(woken.n_prompts, 'prompt')} woke up "
            f"{_count(woken.n_woken, 'distinct SAE feature')} ({number(woken.mean_per_prompt, '.1f')} per prompt on "
            "average")
    if readable:
        text += "; " + ", ".join(f"{w.n_woken} of {w.n_features} at layer {w.layer}" for w in readable)
    candidates, members = woken.n_woken_candidates, woken.n_woken_members
    text += (f"); {candidates} of them {'is' if candidates == 1 else 'are'} among the {analysis.n_candidates} "
             f"candidates and {members} {'is a member' if members == 1 else 'are members'} of the set "
             "ablated on their prompt.")
    if frozen:
        text += (f" {'Layer' if len(frozen) == 1 else 'Layers'} {_layers(frozen)} "
                 f"{'lies' if len(frozen) == 1 else 'lie'} at or below the lowest ablated layer "
                 f"({woken.lowest_ablated_layer}), where nothing can change.")
    return text


def why_no_dormant(analysis: SetsAnalysis, sae_layers: Sequence[int]) -> str:
    """Why a kind of set has no dormant member, from the measured numbers ('' when it has some)."""
    count, woken = analysis.count, analysis.woken
    if count.n_dormant:
        return ""
    if not count.n_sets:
        return f"{analysis.label}: no set to analyse (the search found none)."
    if not woken.n_prompts:
        return f"{analysis.label}: no set has an active member, so nothing was ablated."
    above = [w for w in woken.per_layer if w.can_wake]
    head = f"{analysis.label}: none of the {count.n_members} members is zero on its prompt."
    if not above:
        return (f"{head} The sets' lowest layer is {woken.lowest_ablated_layer} and no SAE layer lies above it "
                f"(SAE layers: {_layers(sae_layers)}), so ablating members cannot wake any feature up: too few SAE "
                "layers for a dormant member to matter.")
    n_above = sum(w.n_features for w in above)
    if not woken.n_woken:
        return (f"{head} Ablating the active members woke up none of the {n_above} SAE features at layers "
                f"{_layers(w.layer for w in above)}, so there was nothing for the search to keep.")
    if not woken.n_woken_candidates:
        return (f"{head} {woken.n_woken} SAE features woke up, but none is among the {analysis.n_candidates} "
                f"candidates ({analysis.top_k} per layer by cosine with the direction) the search chooses from; "
                "larger candidate counts (`dormant.search_top_k`) let it see more of them.")
    return (f"{head} {woken.n_woken_candidates} woken features are candidates, but the greedy search dropped "
            "them: restoring them kept the prompt flipped and moved P(refusal) by less than `search.tau`.")


def fig_woken_per_layer(result: DormantAnalysis, folder: Path) -> str:
    layers = sorted(result.sae_layers)
    sweep = [a for a in result.analyses if a.name.startswith("per_prompt")]
    fig, axes = subplots(ncols=2 if len(sweep) > 1 else 1, figsize=(11 if len(sweep) > 1 else 7, 3.2),
                         squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(result.analyses), 1)
    for j, analysis in enumerate(result.analyses):
        counts = {w.layer: w.n_woken for w in analysis.woken.per_layer}
        xs = [i + (j - (len(result.analyses) - 1) / 2) * width for i in range(len(layers))]
        ax.bar(xs, [counts.get(layer, 0) for layer in layers], width=width, label=analysis.label)
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    frozen = [i for i, layer in enumerate(layers)
              if not any(w.can_wake for a in result.analyses for w in a.woken.per_layer if w.layer == layer)]
    for i in frozen:
        ax.text(i, 0, "cannot change\n(at or below\nthe ablation)", ha="center", va="bottom", fontsize=7,
                color="grey")
    ax.set_xlabel("SAE layer")
    ax.set_ylabel("distinct features woken")
    ax.set_title(f"Woken once the active members are ablated (> {result.wake_threshold:g})", fontsize=9)
    ax.legend(fontsize=7)
    if len(sweep) > 1:
        ax = axes[0][1]
        ks = [a.top_k for a in sweep]
        ax.plot(ks, [a.count.n_dormant for a in sweep], "o-", label="dormant members")
        ax.plot(ks, [a.count.n_members for a in sweep], "s--", label="members")
        ax.plot(ks, [a.woken.n_woken_candidates for a in sweep], "^:", label="woken candidates")
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(ks)), [str(k) for k in sorted(set(ks))])
        ax.minorticks_off()
        ax.set_xlabel("candidates per layer (per-prompt search)")
        ax.set_ylabel("count, summed over prompts")
        ax.legend(fontsize=7)
        ax.set_title("Per-prompt sets by candidate count", fontsize=9)
    return save_figure(fig, folder, "dormant_woken")


def _count_rows(result: DormantAnalysis) -> list[list]:
    return [[a.label, a.top_k, a.count.n_sets, a.count.n_members, a.count.n_dormant, a.count.n_prompts_with_dormant,
             a.count.n_needed, a.woken.n_woken, number(a.woken.mean_per_prompt, ".1f"), a.woken.n_woken_candidates]
            for a in result.analyses]


def _top_rows(result: DormantAnalysis) -> list[list]:
    return [[a.label, f.layer, f.feature, f.n_prompts, number(f.mean_activation, ".3g"), f.candidate, f.member]
            for a in result.analyses for f in a.woken.top]


def report(result: DormantAnalysis, inputs: Inputs, figures: Path) -> list[ReportSection]:
    shared = result.shared
    if shared.n_features:
        text = (f"{len(shared.dormant_on_every_prompt)} of {shared.n_features} shared-set features never fire on "
                f"any search prompt; a prompt has {number(shared.mean_dormant_per_prompt, '.1f')} dormant members "
                f"on average.")
        if shared.n_tested():
            text += (f" Of the {shared.n_tested()} prompts with both dormant and active members, the jailbreak "
                     f"fails without the dormant ones on {percent(shared.fraction_jailbreak_fails_without_dormant)}; "
                     f"ablating the active members wakes up {number(shared.mean_woke_up, '.1f')} dormant ones on "
                     f"average.")
        else:
            text += " No prompt has both dormant and active members, so none was tested without its dormant ones."
    else:
        text = "The shared set is empty."
    where = "every prompt token" if result.positions == "prompt" else "the last prompt token"
    body = (f"<p>{text}</p><p>A member is dormant when it is zero at {where} of its prompt. Independently of the "
            f"sets, every feature of the SAE layers {_layers(sorted(result.sae_layers))} "
            f"({_count(len(result.sae_layers), 'layer')}) was checked: it wakes up when it is zero there on the clean prompt and above "
            f"{result.wake_threshold:g} once the prompt's active members are zero-ablated.</p>")
    body += table(_count_rows(result), ["sets", "candidates / layer", "prompts", "members", "dormant",
                                        "prompts with dormant", "jailbreak needs them", "woken features",
                                        "woken / prompt", "woken candidates"])
    body += "".join(f"<p>{woken_sentence(a)}</p>" for a in result.analyses)
    if not result.n_dormant():
        reasons = [why_no_dormant(a, sorted(result.sae_layers)) for a in result.analyses]
        body += "<p><b>No dormant feature.</b> " + " ".join(r for r in reasons if r) + "</p>"
    body += img(fig_woken_per_layer(result, figures), "woken features per layer")
    if any(a.woken.top for a in result.analyses):
        body += "<p>The most often woken features:</p>" + table(
            _top_rows(result), ["sets", "layer", "feature", "prompts", "mean activation", "candidate", "member"],
            sortable=True, scroll=True)
    return [ReportSection("Dormant features", body)]


STAGE = Stage(
    name="dormant",
    result=DormantAnalysis,
    compute=compute,
    reads=("prompt_sets", "direction", "candidates", "search"),
    config_sections=("dormant",),
    summary=summary,
    report=report,
)
