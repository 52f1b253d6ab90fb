"""The one configuration of a refusal-feature search run (``refusal-lens run --config FILE.toml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from refusal_lens.config import ModelConfig, SAEConfig, StrictModel


class DataConfig(StrictModel):
    """Which prompts, and how many of each split. Discovery uses train/val; evaluation uses test only."""

    harmful: list[str] = Field(default_factory=lambda: ["harmbench", "donotanswer"],
                               description="registered set names or prompt files")
    harmless: list[str] = Field(default_factory=lambda: ["harmless-plain"])
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
    positions: list[int] | Literal["post_instruction"] = "post_instruction"
    max_layer_fraction: float = Field(0.8, gt=0, le=1)
    kl_threshold: float = 0.1
    induce_threshold: float = 0.0

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
    block_size: int = Field(5, ge=1)
    tau: float = Field(0.1, gt=0, description="relative change of P(refusal) that makes a feature necessary")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    per_prompt: bool = True
    per_prompt_limit: int | None = Field(None, ge=1, description="per-prompt searches on the first N search prompts only")
    shared: bool = True
    shared_flip_fraction: float = Field(0.9, gt=0, le=1, description=(
        "a shared set must keep this fraction of the prompts that the full candidate set flips flipped"))
    rows_per_forward: int = Field(64, ge=1, description="(prompt, feature set) pairs evaluated per forward pass")


class InteractionsConfig(StrictModel):
    embedding_dim: int = 20
    learning_rate: float = 1e-3
    epochs: int = 20
    batch_size: int = 32
    top_k: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    max_features: int = Field(4096, description="most frequently active features kept as FM inputs")


class EvaluationConfig(StrictModel):
    judge: str = Field("substring", description="substring, harmbench or llamaguard (the refusal-score "
                                                  "flip rate is always reported too)")

    @field_validator("judge")
    @classmethod
    def _answer_judge(cls, value: str) -> str:
        from refusal_lens.judges import canonical_judge_name

        name = canonical_judge_name(value)
        if name == "refusal_score":
            raise ValueError("evaluation.judge judges answers: use substring, harmbench or llamaguard; "
                             "the refusal-score flip rate is reported for every method anyway")
        return name
    max_new_tokens: int = Field(64, ge=1)
    n_random_sets: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)


class RunConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    saes: SAEConfig = Field(default_factory=SAEConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    direction: DirectionConfig = Field(default_factory=DirectionConfig)
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    interactions: InteractionsConfig = Field(default_factory=InteractionsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    seed: int = 0
    batch_size: int = Field(16, ge=1, description="prompts per forward pass outside the search")


def demo_config() -> RunConfig:
    """Small defaults that run the whole pipeline on the organism in minutes on a laptop CPU."""
    return RunConfig(
        data=DataConfig(n_train=32, n_val=8, n_search=6, n_eval=32, n_fm=64),
        direction=DirectionConfig(positions=[-1], layers=list(range(2, 24, 2))),
        candidates=CandidatesConfig(top_k=10, layers=[14, 18, 21, 22]),
        search=SearchConfig(seeds=[0, 1, 2], rows_per_forward=48, per_prompt_limit=3),
        interactions=InteractionsConfig(top_k=[10, 25, 50], max_features=2048),
        evaluation=EvaluationConfig(max_new_tokens=32, n_random_sets=2),
    )
