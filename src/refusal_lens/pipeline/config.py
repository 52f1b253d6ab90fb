"""The one configuration of a refusal-feature search run (``refusal-lens run --config FILE.toml``).

Each pipeline stage declares the sections its artifacts depend on (``Stage.config_sections``);
``docs/CONFIG.md`` is generated from these models (``python -m refusal_lens.pipeline.docs``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from refusal_lens.config import ModelConfig, SAEConfig, StrictModel
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
    max_layer_fraction: float = Field(0.8, gt=0, le=1, description="candidates from layers at or above this "
                                                                    "fraction of the depth are dropped")
    kl_threshold: float = Field(0.1, description="a candidate must keep the harmless next-token KL below this")
    induce_threshold: float = Field(0.0, description="adding a candidate must raise the harmless refusal score "
                                                     "above this")

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


class InteractionsConfig(StrictModel):
    embedding_dim: int = Field(20, description="the factorization machine's embedding size")
    learning_rate: float = Field(1e-3, description="Adam's learning rate")
    epochs: int = Field(20, description="passes over the training prompts")
    batch_size: int = Field(32, description="prompts per optimiser step")
    top_k: list[int] = Field(default_factory=lambda: [10, 25, 50, 100], description=(
        "sizes of the top-K sweep; the evaluation's interaction methods use the largest"))
    max_features: int = Field(4096, description="most frequently active features kept as FM inputs")


class EvaluationConfig(StrictModel):
    judge: str = Field("substring", description="substring, harmbench or llamaguard (the refusal-score "
                                                  "flip rate is always reported too)")

    max_new_tokens: int = Field(64, ge=1, description="greedy answer length (also the verification's)")
    n_random_sets: int = Field(3, ge=1, description="random control sets matched to the minimal set")
    batch_size: int | None = Field(None, ge=1, description=(
        "prompts per batch of scoring, generation and judging (also the verification's); default: the largest "
        "that fits the GPU, 16 on the CPU"))

    @field_validator("judge")
    @classmethod
    def _answer_judge(cls, value: str) -> str:
        name = canonical_judge_name(value)
        if name == "refusal_score":
            raise ValueError("evaluation.judge judges answers: use substring, harmbench or llamaguard; "
                             "the refusal-score flip rate is reported for every method anyway")
        return name


class RunConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="the chat model")
    saes: SAEConfig = Field(default_factory=SAEConfig, description="its SAEs")
    data: DataConfig = Field(default_factory=DataConfig, description="the prompt sets")
    direction: DirectionConfig = Field(default_factory=DirectionConfig, description="the refusal direction")
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig, description="the candidate features")
    search: SearchConfig = Field(default_factory=SearchConfig, description="the greedy minimal-set search")
    interactions: InteractionsConfig = Field(default_factory=InteractionsConfig,
                                             description="the factorization machine and its sweep")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig,
                                         description="the held-out evaluation (and the verification's generation)")
    seed: int = Field(0, description="prompt sampling, the factorization machine, the probe, the random controls")
    batch_size: int | None = Field(None, ge=1, description=(
        "prompts per forward pass outside the search and the evaluation; default: the largest that fits the "
        "GPU, 16 on the CPU"))


def organism_sae_layers(lowest: float, highest: float) -> list[int]:
    """The organism's SAE layers (from its manifest) at depth fractions in ``[lowest, highest)``."""
    return [L for L in organism_manifest()["sae_layers"]
            if lowest * ORGANISM_N_LAYERS <= L < highest * ORGANISM_N_LAYERS]


def demo_config() -> RunConfig:
    """Small defaults that run the whole pipeline on the organism in minutes on a laptop CPU.

    Candidates come from the organism's SAE layers at depth fractions [40%, 80%) (layers 14,
    18, 21 and 22 of 30 for the shipped build): fewer, higher layers keep the search cheap,
    and the direction search drops layers from 80% on (``direction.max_layer_fraction``).
    """
    return RunConfig(
        data=DataConfig(n_train=32, n_val=8, n_search=6, n_eval=32, n_fm=64),
        direction=DirectionConfig(positions=[-1], layers=list(range(2, 24, 2))),
        candidates=CandidatesConfig(top_k=10, layers=organism_sae_layers(0.4, 0.8)),
        search=SearchConfig(seeds=[0, 1, 2], rows_per_forward=48, per_prompt_limit=3),
        interactions=InteractionsConfig(top_k=[10, 25, 50], max_features=2048),
        evaluation=EvaluationConfig(max_new_tokens=32, n_random_sets=2),
    )
