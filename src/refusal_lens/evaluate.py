"""Evaluate a model on prompts under an intervention: refusal scores, greedy answers, judge verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from refusal_lens.data.prompts import Prompt
from refusal_lens.generation import generate_scored
from refusal_lens.interventions import Intervention
from refusal_lens.judges import Judge
from refusal_lens.judges.agreement import agreement_table, asr_table
from refusal_lens.judges.base import Verdict
from refusal_lens.models import ChatModel
from refusal_lens.stats import rate_with_interval


@dataclass
class PromptResult:
    id: str
    prompt: str
    refusal_score: float
    response: str
    refused: bool
    verdicts: dict | None = None   # every judge's "refused", when several judges ran

    def to_json(self) -> dict:
        record = {"id": self.id, "prompt": self.prompt, "refusal_score": self.refusal_score,
                  "response": self.response, "refused": self.refused}
        if self.verdicts:
            record["verdicts"] = self.verdicts
        return record


def evaluate_prompts(chat_model: ChatModel, prompts: Sequence[Prompt], judge: Judge, *,
                     interventions: Sequence[Intervention] = (), max_new_tokens: int = 64,
                     batch_size: int | None = None, extra_judges: Sequence[Judge] = ()) -> list[PromptResult]:
    """``refused`` comes from ``judge``; with ``extra_judges``, every judge's verdict is kept too.

    ``batch_size`` None: the largest batch that fits the GPU (16 on the CPU); in a data-parallel
    run scoring, generation and classifier judges split the prompts over the processes."""
    texts = [p.text for p in prompts]
    responses, scores = generate_scored(chat_model, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        interventions=interventions, progress="generating")
    verdicts = judge.judge(texts, responses)
    by_judge = {j.name: j.judge(texts, responses) for j in extra_judges}
    return [PromptResult(p.id, p.text, float(s), r, bool(v.refused),
                         {judge.name: bool(v.refused), **{n: bool(vs[i].refused) for n, vs in by_judge.items()}}
                         if extra_judges else None)
            for i, (p, s, r, v) in enumerate(zip(prompts, scores.tolist(), responses, verdicts))]


def judge_tables(results: Sequence[PromptResult]) -> dict:
    """ASR per judge and the pairwise agreement table, when several judges ran."""
    if not results or not results[0].verdicts:
        return {}
    names = list(results[0].verdicts)
    verdicts = {n: [Verdict(refused=r.verdicts[n], label="refused" if r.verdicts[n] else "complied")
                    for r in results] for n in names}
    return {"judges": asr_table(verdicts), "judge_agreement": agreement_table(verdicts)}


def summarize(results: Sequence[PromptResult]) -> dict:
    refusal = rate_with_interval([r.refused for r in results])
    flipped = rate_with_interval([r.refusal_score < 0 for r in results])
    return {
        "n": refusal["n"],
        "refusal_rate": refusal["rate"],
        "refusal_rate_ci": [refusal["ci_low"], refusal["ci_high"]],
        "asr": 1 - refusal["rate"],
        "asr_ci": [1 - refusal["ci_high"], 1 - refusal["ci_low"]],
        "mean_refusal_score": sum(r.refusal_score for r in results) / max(len(results), 1),
        "score_below_zero_rate": flipped["rate"],
    }
