"""The damage metric of every evaluated method: KL of the next-token distribution at the last prompt
position on harmless prompts, base vs edited, checked against a float64 one-prompt-at-a-time
reference; its summary, its interval, and the ASR-vs-KL Pareto front."""

import json
import math

import pytest
import torch

from refusal_lens.capability import BaseLogits, capability_report, next_token_shift
from refusal_lens.interventions import ActivationAddition
from refusal_lens.pipeline.evaluation import pareto_front
from refusal_lens.stats import mean_with_interval

INSTRUCTIONS = ["How do I make a cake?", "Write a poem about the sea.", "Hi", "Name three rivers in Europe, please."]


def reference_shift(chat_model, instructions, interventions):
    """One prompt at a time, in float64: KL(p || q) = Σ p (log p − log q), and top-1 p == top-1 q."""
    from refusal_lens.scoring import last_position_logits

    kl, same = [], []
    for text in instructions:
        p = last_position_logits(chat_model, [text])[0].double().log_softmax(-1)
        q = last_position_logits(chat_model, [text], interventions)[0].double().log_softmax(-1)
        kl.append(float((p.exp() * (p - q)).sum()))
        same.append(bool(p.argmax() == q.argmax()))
    return kl, same


@pytest.mark.parametrize("batch_size", [1, 3])
def test_kl_and_top1_match_the_reference(llama, batch_size):
    push = ActivationAddition(torch.randn(llama.d_model, generator=torch.Generator().manual_seed(0)) * 2, layer=1)
    shift = next_token_shift(llama, INSTRUCTIONS, interventions=[push], batch_size=batch_size)
    kl, same = reference_shift(llama, INSTRUCTIONS, [push])
    assert shift.kl == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert shift.top1_unchanged == same
    assert min(kl) > 1e-4


def test_top1_share_counts_prompts_whose_argmax_moved(llama):
    big = ActivationAddition(torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1)) * 200, layer=2)
    shift = next_token_shift(llama, INSTRUCTIONS, interventions=[big], batch_size=2)
    _, same = reference_shift(llama, INSTRUCTIONS, [big])
    summary = shift.to_json()
    assert summary["top1_unchanged"] == pytest.approx(sum(same) / len(same))
    assert summary["kl_median"] <= summary["kl_max"] == pytest.approx(max(shift.kl))
    assert summary["kl_ci"][0] <= summary["kl_mean"] <= summary["kl_ci"][1]


def test_no_intervention_is_exactly_zero(llama):
    base = BaseLogits(llama)
    shift = next_token_shift(llama, INSTRUCTIONS, base, batch_size=3)
    assert shift.kl == [0.0] * 4 and all(shift.top1_unchanged)
    assert sorted(len(batch) for batch in base._by_batch) == [1, 3]  # the base was read on the same batches


def test_capability_report_gives_every_method_its_kl(llama):
    push = ActivationAddition(torch.randn(llama.d_model, generator=torch.Generator().manual_seed(2)) * 5, layer=1)
    report = capability_report(llama, INSTRUCTIONS[:3], {"push": [push], "noop": []}, max_new_tokens=3, batch_size=2)
    kl, _ = reference_shift(llama, INSTRUCTIONS[:3], [push])
    assert report["methods"]["push"]["next_token"]["kl_mean"] == pytest.approx(sum(kl) / 3, rel=1e-3)
    assert report["methods"]["noop"]["next_token"]["kl_max"] == 0.0
    json.dumps(report)


def test_mean_with_interval():
    values = [0.0, 0.1, 0.2, 5.0]
    result = mean_with_interval(values, seed=3)
    assert result["mean"] == pytest.approx(1.325) and result["n"] == 4
    assert 0.0 <= result["ci_low"] <= result["mean"] <= result["ci_high"] <= 5.0
    assert mean_with_interval(values, seed=3) == result
    assert math.isnan(mean_with_interval([])["mean"])


def test_pareto_front_keeps_the_methods_nothing_beats_on_both_counts():
    points = {"none": (0.0, 0.1), "cheap": (0.05, 0.9), "direction": (3.0, 1.0), "worse": (0.5, 0.8),
              "tie": (0.05, 0.9)}
    assert pareto_front(points) == ["none", "cheap", "tie", "direction"]
