"""Stage 4b: dormant ("hydra") features of a minimal set (METHOD.md §4).

A member of a prompt's critical set is dormant when it does not fire anywhere on the clean
prompt. We count them, test whether the jailbreak survives without them, and see which
wake up once the active members are ablated (self-repair).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from refusal_lens.activations import model_inputs
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.interventions import FeatureIntervention, FeatureKey, SparseSAESlice, group_by_layer, intervene
from refusal_lens.saes.slices import sparse_slice
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores


@torch.no_grad()
def max_activations(chat_model: ChatModel, saes: SAESet, features: Sequence[FeatureKey],
                    instructions: Sequence[str], interventions: Sequence = ()) -> torch.Tensor:
    """``[prompts, features]``: each feature's largest activation over the prompt's real tokens.

    A feature at layer L is read from block L's output before any edit at L itself (so
    what it shows is the effect of edits at lower layers), with the error term irrelevant.
    """
    by_layer = group_by_layer(features)
    batch = chat_model.tokenize(list(instructions))
    mask = batch["attention_mask"].bool()[:, :, None]
    found: dict[int, torch.Tensor] = {}

    def reader(layer: int, sparse: SparseSAESlice):
        def read(hidden):
            acts, _ = sparse.encode(hidden)
            found[layer] = acts.masked_fill(~mask, 0).amax(1).float().cpu()
        return read

    handles = [add_output_edit(chat_model.layers[L], reader(L, sparse_slice(saes[L], idx, chat_model.device)))
               for L, idx in by_layer.items()]
    with hooks_removed_on_exit(handles), intervene(chat_model, *interventions):
        chat_model.model(**model_inputs(batch), use_cache=False)
    column = {(L, i): (L, j) for L, idx in by_layer.items() for j, i in enumerate(idx)}
    return torch.stack([found[column[tuple(f)][0]][:, column[tuple(f)][1]] for f in features], dim=1)


def analyse_dormant(chat_model: ChatModel, saes: SAESet, minimal: Sequence[FeatureKey],
                    instructions: Sequence[str], prompt_ids: Sequence[str]) -> dict:
    minimal = [tuple(f) for f in minimal]
    if not minimal:
        return {"n_features": 0, "per_prompt": {}}
    clean = max_activations(chat_model, saes, minimal, instructions)
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
            woken = max_activations(chat_model, saes, dormant, [text], [FeatureIntervention(saes, active)])[0]
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
