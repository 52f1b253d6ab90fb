"""Stage 4b: dormant ("hydra") features of a minimal set (METHOD.md §4).

A member of a prompt's critical set is dormant when it does not fire anywhere on the clean
prompt. We count them, test whether the jailbreak survives without them, and see which
wake up once the active members are ablated (self-repair).
"""

from __future__ import annotations

from collections.abc import Sequence

from refusal_lens.activations import read_features
from refusal_lens.interventions import FeatureIntervention, FeatureKey
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores


def analyse_dormant(chat_model: ChatModel, saes: SAESet, minimal: Sequence[FeatureKey],
                    instructions: Sequence[str], prompt_ids: Sequence[str]) -> dict:
    minimal = [tuple(f) for f in minimal]
    if not minimal:
        return {"n_features": 0, "per_prompt": {}}
    clean = read_features(chat_model, saes, instructions, minimal, reduce="max").values
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
            woken = read_features(chat_model, saes, [text], dormant, reduce="max",
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
