"""Judges of a model's answers, behind one interface (see ``base.Judge``).

``get_judge(name, **kw)`` builds one by name; ``Verdict.refused`` is True for a refusal /
a not-harmful answer, so the attack success rate is ``mean(not v.refused)``.
"""

from refusal_lens.judges.agreement import agreement_table, asr_table, run_judges
from refusal_lens.judges.base import Judge, Verdict
from refusal_lens.judges.registry import JUDGE_NAMES, canonical_judge_name, get_judge
from refusal_lens.judges.substring import (
    DEFAULT_PHRASES,
    GCG_PHRASES,
    JAILBREAKBENCH_PHRASES,
    PHRASE_SETS,
    SubstringJudge,
)

__all__ = [
    "DEFAULT_PHRASES", "GCG_PHRASES", "JAILBREAKBENCH_PHRASES", "JUDGE_NAMES", "PHRASE_SETS",
    "Judge", "SubstringJudge", "Verdict", "agreement_table", "asr_table", "canonical_judge_name", "get_judge",
    "run_judges",
]
