"""Judges by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refusal_lens.judges.base import Judge
from refusal_lens.judges.harmbench import HarmBenchJudge
from refusal_lens.judges.llamaguard import LlamaGuardJudge
from refusal_lens.judges.refusal_score import RefusalScoreJudge
from refusal_lens.judges.substring import SubstringJudge

JUDGE_NAMES: dict[str, str] = {
    "substring": "refusal phrases in the first N tokens of the answer (no model)",
    "refusal_score": "the model's own refusal score at the last prompt position (> 0: refuses)",
    "harmbench": "HarmBench classifier cais/HarmBench-Llama-2-13b-cls (yes/no prompt)",
    "llamaguard": "Llama-Guard-3-8B (its chat template; safe / unsafe + categories)",
}
_ALIASES = {"refusal-score": "refusal_score", "score": "refusal_score",
            "llama-guard": "llamaguard", "llama_guard": "llamaguard", "llamaguard3": "llamaguard",
            "harmbench-cls": "harmbench", "harmbench_cls": "harmbench", "string": "substring"}


def canonical_judge_name(name: str) -> str:
    """The registry name for ``name`` (aliases accepted); raises ``ValueError`` listing the known ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in JUDGE_NAMES:
        raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(JUDGE_NAMES)}")
    return key


def _factory(name: str) -> Callable[..., Judge]:
    return {"substring": SubstringJudge, "refusal_score": RefusalScoreJudge, "harmbench": HarmBenchJudge,
            "llamaguard": LlamaGuardJudge}[name]


def get_judge(name: str, **kwargs: Any) -> Judge:
    """Build a judge by name (``substring``, ``refusal_score``, ``harmbench``, ``llamaguard``).

    Keyword arguments go to the judge's constructor (e.g. ``max_tokens=`` for substring,
    ``chat_model=`` for refusal_score, ``device=`` / ``dtype=`` / ``batch_size=`` for the
    classifiers).
    """
    return _factory(canonical_judge_name(name))(**kwargs)
