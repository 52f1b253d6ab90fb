"""Stage ``direction``: where the tuned model's refusal direction lives, and the SAE layers.

r_L = difference of means (harmful − harmless train prompts) of the residual at the last
prompt token, every layer: the library's :func:`~refusal_lens.pipeline.direction.candidate_directions`
at position -1. Separation: r̂_L projections of validation prompts the tuned model refuses vs
answers (Cohen's d, AUROC). Bypass [A24]: the mean refusal score of refused validation
prompts with r_L ablated at every layer.

The recipe ranks layers by bypass alone and takes half its SAE layers from the top of that
ranking (:func:`choose_sae_layers`). It does not call the library's
:func:`~refusal_lens.pipeline.direction.find_direction`, which also filters candidates by
whether adding the direction induces refusal and by the KL divergence ablation causes on
harmless prompts, over several positions: that choice (layer 22 in the demo) answers another
question than which layers the SAEs should cover (layer 14 here), and changing it would move
the shipped SAEs.
"""

from __future__ import annotations

import math

import torch
from sklearn.metrics import roc_auc_score

from organism_build import prompt_sets as P
from organism_build.build import Build, load_tuned_chat, log
from refusal_lens.activations import residuals
from refusal_lens.artifacts import read_json, write_json
from refusal_lens.interventions import DirectionalAblation
from refusal_lens.judges import SubstringJudge
from refusal_lens.models import ChatModel
from refusal_lens.pipeline.direction import candidate_directions
from refusal_lens.scoring import refusal_scores

BATCH_SIZE = 32
BYPASS_PROMPTS = 24
CANDIDATE_FRACTION = 0.8  # the last 20% of layers are not candidates (as in [A24])


def last_position_residuals(chat: ChatModel, texts: list[str]) -> torch.Tensor:
    """``[n_layers, n, d_model]``: every layer's residual at each prompt's last token."""
    layers = list(range(chat.n_layers))
    chunks = [residuals(chat, texts[i:i + BATCH_SIZE], layers, positions=[-1])
              for i in range(0, len(texts), BATCH_SIZE)]
    return torch.stack([torch.cat([c[L][:, 0] for c in chunks]) for L in layers])


def auroc(positive, negative) -> float:
    """Area under the ROC curve of ``positive`` vs ``negative`` scores (ties count half)."""
    positive, negative = list(map(float, positive)), list(map(float, negative))
    return float(roc_auc_score([1] * len(positive) + [0] * len(negative), positive + negative))


def separation(r: torch.Tensor, harmful_val: torch.Tensor, harmless_val: torch.Tensor) -> list[dict]:
    """Per layer: AUROC and Cohen's d of the r̂_L projections, and |r_L|."""
    r_hat = r / r.norm(dim=-1, keepdim=True)
    proj_h = torch.einsum("lnd,ld->ln", harmful_val, r_hat)
    proj_s = torch.einsum("lnd,ld->ln", harmless_val, r_hat)
    per_layer = []
    for L in range(r.shape[0]):
        h, s = proj_h[L], proj_s[L]
        pooled = math.sqrt((h.var() + s.var()) / 2)
        per_layer.append({"layer": L, "auroc": auroc(h, s), "cohen_d": float((h.mean() - s.mean()) / pooled),
                          "norm": float(r[L].norm())})
    return per_layer


def stage_direction(build: Build) -> None:
    chat = load_tuned_chat(build.path("adapter"))
    responses = read_json(build.path("responses.json"))
    judge = SubstringJudge()
    # train: every harmful / harmless train prompt (the LoRA was trained to refuse / answer
    # exactly these); val: the prompts the tuned model refused / answered
    refused = lambda p: judge.judge_one(responses[p.id]["answer"]).refused  # noqa: E731
    harmful_train = [p.text for p in P.by_split(build.harmful, "train")]
    harmless_train = [p.text for p in P.by_split(build.harmless, "train")]
    harmful_val = [p.text for p in P.by_split(build.harmful, "val") if p.id in responses and refused(p)]
    harmless_val = [p.text for p in P.by_split(build.harmless, "val") if not refused(p)]
    log(f"direction: train {len(harmful_train)} harmful / {len(harmless_train)} harmless; "
        f"val {len(harmful_val)} refused harmful / {len(harmless_val)} answered harmless")
    r = candidate_directions(chat, harmful_train, harmless_train, positions=[-1], batch_size=BATCH_SIZE)[:, 0]
    per_layer = separation(r, last_position_residuals(chat, harmful_val),
                           last_position_residuals(chat, harmless_val))
    probe = harmful_val[:BYPASS_PROMPTS]
    clean = float(refusal_scores(chat, probe).mean())
    for entry in per_layer:  # lower bypass score = the direction matters more
        L = entry["layer"]
        if L < int(CANDIDATE_FRACTION * chat.n_layers):
            entry["bypass_score"] = float(refusal_scores(chat, probe, interventions=[DirectionalAblation(r[L])]).mean())
    ranked = sorted((x for x in per_layer if "bypass_score" in x), key=lambda x: x["bypass_score"])
    best = ranked[0]["layer"]
    layers_for_saes = choose_sae_layers(ranked, chat.n_layers, build.config.sae.n_layers)
    log(f"direction: clean refusal score {clean:.2f}; ablating r_L: "
        + ", ".join(f"{x['layer']}:{x['bypass_score']:.2f}" for x in ranked[:6]))
    log(f"direction: best layer {best}; SAE layers {layers_for_saes}")
    torch.save(r, build.path("direction.pt"))
    write_json(build.path("direction.json"), {"per_layer": per_layer, "best_layer": best,
                                               "clean_score": clean, "n_bypass_prompts": len(probe),
                                               "sae_layers": layers_for_saes})


def choose_sae_layers(ranked: list[dict], n_layers: int, n: int) -> list[int]:
    """Half where ablating the layer's direction removes the most refusal (``ranked``, best
    first), half spread evenly over the model."""
    chosen = [x["layer"] for x in ranked[: n // 2]]
    spread = [round(1 + i * (n_layers - 4) / (n - n // 2 - 1)) for i in range(n - n // 2)]
    for L in spread:
        candidates = sorted(range(1, n_layers - 2), key=lambda c: (abs(c - L), c))
        chosen.append(next(c for c in candidates if c not in chosen))
    return sorted(chosen)
