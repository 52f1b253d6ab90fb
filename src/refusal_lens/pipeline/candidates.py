"""Stage: candidate features, SAE decoder rows ranked by cosine with the refusal direction (METHOD.md §4.1)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from refusal_lens.interventions import FeatureKey
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.saes import SAESet


def rank_by_cosine(saes: SAESet, direction: torch.Tensor, top_k: int,
                   layers: list[int] | str = "all") -> list[dict]:
    """The ``top_k`` decoder rows of every SAE (at ``layers``) closest in direction to ``direction``."""
    unit = (direction / direction.norm()).float()
    if layers != "all":
        missing = sorted(set(layers) - set(saes.layers))
        if missing:
            raise ValueError(f"candidates.layers {missing} have no SAE; the SAEs cover {saes.layers}.")
    ranked = []
    for layer in saes.layers if layers == "all" else sorted(layers):
        decoder = saes[layer].W_dec.detach().float()
        cosine = (decoder @ unit.to(decoder.device)) / decoder.norm(dim=-1).clamp_min(1e-12)
        values, index = cosine.topk(min(top_k, cosine.numel()))
        ranked += [{"layer": layer, "feature": int(i), "cosine": float(v)} for v, i in zip(values, index)]
    return ranked


class Candidate(BaseModel):
    layer: int = Field(description="the SAE's layer")
    feature: int = Field(description="the feature's index in that SAE")
    cosine: float = Field(description="cosine of its decoder row with the refusal direction")


class Candidates(BaseModel):
    features: list[Candidate] = Field(description="the top `candidates.top_k` decoder rows of each SAE layer "
                                                  "(`candidates.layers`), layer by layer, best first")

    def keys(self) -> list[FeatureKey]:
        return [(c.layer, c.feature) for c in self.features]

    def layers(self) -> list[int]:
        return sorted({c.layer for c in self.features})


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> Candidates:
    config = ctx.config.candidates
    vector = load_vector(inputs.dir("direction"))
    return Candidates(features=rank_by_cosine(ctx.saes, vector, config.top_k, config.layers))


def summary(result: Candidates) -> list[str]:
    return [f"Candidates: {len(result.features)} SAE features at layers {result.layers()}"]


STAGE = Stage(
    name="candidates",
    result=Candidates,
    compute=compute,
    reads=("direction",),
    config_sections=("candidates", "saes"),
    summary=summary,
)
