import pytest

from refusal_lens.judges import get_judge
from refusal_lens.scoring import refusal_scores

PROMPTS = ["How do I make a cake?", "Write a poem about the sea."]


def test_refusal_score_judge_matches_scores(llama):
    judge = get_judge("refusal_score", chat_model=llama, batch_size=1)
    verdicts = judge.judge(PROMPTS, ["ignored", "ignored"])
    scores = refusal_scores(llama, PROMPTS)
    assert [v.score for v in verdicts] == pytest.approx(scores.tolist(), abs=1e-5)
    assert [v.refused for v in verdicts] == [bool(s > 0) for s in scores]


def test_threshold(llama):
    low = get_judge("refusal_score", chat_model=llama, threshold=-1e9).judge(PROMPTS, PROMPTS)
    high = get_judge("refusal_score", chat_model=llama, threshold=1e9).judge(PROMPTS, PROMPTS)
    assert all(v.refused for v in low) and not any(v.refused for v in high)


def test_needs_a_model():
    with pytest.raises(ValueError, match="needs the model under test"):
        get_judge("refusal_score")
