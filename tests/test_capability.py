"""Capability cost on the tiny random Llama of conftest (real chat template, real forward)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from refusal_lens.capability import (
    MCQuestion,
    capability_report,
    completion_cross_entropy,
    load_mc_file,
    multiple_choice_accuracy,
    own_completions,
)
from refusal_lens.data import DataError
from refusal_lens.interventions import ActivationAddition

INSTRUCTIONS = ["How do I make a cake?", "Write a poem about the sea.", "Hi"]
COMPLETIONS = ["Mix flour and eggs, then bake.", "The sea is wide and blue.", "Hello!"]


def _manual_ce(chat_model, instruction, completion):
    """Unbatched reference: -log p of each completion token after the formatted prompt."""
    batch = chat_model.tokenize([instruction])
    prompt = batch["input_ids"][0].tolist()
    target = chat_model.tokenizer.encode(completion, add_special_tokens=False)
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logits = chat_model.model(input_ids=ids).logits[0].float()
    logp = logits.log_softmax(-1)
    losses = [-logp[len(prompt) + i - 1, tok] for i, tok in enumerate(target)]
    return float(torch.stack(losses).sum()), len(target)


def test_cross_entropy_matches_unbatched_reference(llama):
    result = completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS, batch_size=3)
    parts = [_manual_ce(llama, i, c) for i, c in zip(INSTRUCTIONS, COMPLETIONS)]
    total, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
    assert result.n_tokens == n                        # masked: completion tokens only
    assert result.mean == pytest.approx(total / n, rel=1e-4)
    assert result.per_prompt == pytest.approx([s / k for s, k in parts], rel=1e-4)


def test_cross_entropy_independent_of_batching(llama):
    a = completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS, batch_size=1)
    b = completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS, batch_size=3)
    assert a.per_prompt == pytest.approx(b.per_prompt, rel=1e-4)


def test_intervention_changes_cross_entropy(llama):
    base = completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS)
    torch.manual_seed(0)
    push = ActivationAddition(vector=torch.randn(llama.d_model) * 50, layer=1)
    moved = completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS, interventions=[push])
    assert moved.n_tokens == base.n_tokens and moved.mean != pytest.approx(base.mean)
    again = completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS)
    assert again.mean == pytest.approx(base.mean)       # hooks were removed


def test_empty_completion_is_skipped_not_counted(llama):
    r = completion_cross_entropy(llama, INSTRUCTIONS[:2], [COMPLETIONS[0], ""])
    assert math.isnan(r.per_prompt[1]) and r.n_tokens == len(llama.tokenizer.encode(COMPLETIONS[0], add_special_tokens=False))


def test_report_with_own_completions_and_mc(llama, tmp_path):
    questions = [MCQuestion(f"q{i}", f"What is {i}+1?", ("one", "two", "three"), ("A", "B", "C"), i % 3)
                 for i in range(4)]
    torch.manual_seed(0)
    push = ActivationAddition(vector=torch.randn(llama.d_model) * 50, layer=1)
    report = capability_report(llama, INSTRUCTIONS[:2], {"push": [push]}, mc_questions=questions,
                               max_new_tokens=6)
    assert report["completions"] == own_completions(llama, INSTRUCTIONS[:2], max_new_tokens=6)
    m = report["methods"]["push"]
    assert m["delta_cross_entropy"] == pytest.approx(m["cross_entropy"]["mean"] - report["baseline"]["cross_entropy"]["mean"])
    assert m["multiple_choice"]["n"] == 4 and "p_value" in m["multiple_choice_vs_baseline"]
    json.dumps(report)


def test_mc_prediction_is_argmax_of_label_logits(llama):
    from refusal_lens.scoring import last_position_logits

    q = MCQuestion("q", "Pick one.", ("x", "y"), ("A", "B"), 0)
    result = multiple_choice_accuracy(llama, [q])
    logits = last_position_logits(llama, [q.instruction()])[0]
    ids = {lab: [t for t in {llama.tokenizer.encode(v, add_special_tokens=False)[0] for v in (lab, " " + lab)}
                 if llama.tokenizer.decode([t]).strip() == lab] for lab in "AB"}
    best = max("AB", key=lambda lab: max(float(logits[i]) for i in ids[lab]))
    assert result["predicted"] == ["AB".index(best)]
    assert result["correct"] == [best == "A"]


def test_mc_rigged_model_gets_b_right(llama):
    b_ids = [t for t in {llama.tokenizer.encode(v, add_special_tokens=False)[0] for v in ("B", " B")}
             if llama.tokenizer.decode([t]).strip() == "B"]

    def bias(module, inputs, logits):
        logits = logits.clone()
        logits[..., b_ids] += 1000
        return logits

    handle = llama.model.lm_head.register_forward_hook(bias)
    try:
        qs = [MCQuestion(f"q{i}", "Q?", ("a", "b", "c"), ("A", "B", "C"), i) for i in range(3)]
        result = multiple_choice_accuracy(llama, qs)
    finally:
        handle.remove()
    assert result["predicted"] == [1, 1, 1] and result["k"] == 1 and result["n"] == 3
    assert result["ci_low"] < 1 / 3 < result["ci_high"]


# --- ARC-style files ------------------------------------------------------------------------

def test_load_hf_arc_layout(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text(json.dumps({"id": "Mercury_1", "question": "Which is a gas?",
                             "choices": {"text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]},
                             "answerKey": "B"}) + "\n")
    (q,) = load_mc_file(f)
    assert (q.id, q.answer, q.labels) == ("Mercury_1", 1, ("A", "B", "C"))
    assert q.instruction() == "Which is a gas?\n\nA. rock\nB. steam\nC. ice\n\nAnswer with the letter of the correct choice only."


def test_load_original_arc_layout_with_numeric_labels(tmp_path):
    f = tmp_path / "arc.json"
    f.write_text(json.dumps([{"id": "x", "answerKey": "2", "question": {
        "stem": "Pick two.", "choices": [{"text": "one", "label": "1"}, {"text": "two", "label": "2"}]}}]))
    (q,) = load_mc_file(f)
    assert q.answer == 1 and q.labels == ("1", "2")


def test_load_simple_layout_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "mc.parquet"
    pq.write_table(pa.table({"question": ["Q?"], "choices": [["a", "b"]], "answer": [0]}), f)
    (q,) = load_mc_file(f)
    assert q.labels == ("A", "B") and q.answer == 0 and q.id == "mc:0"


def test_mc_file_missing(tmp_path):
    with pytest.raises(DataError, match="Multiple-choice file not found"):
        load_mc_file(tmp_path / "nope.jsonl")


def test_mc_answer_not_a_label(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text(json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": "E"}) + "\n")
    with pytest.raises(DataError, match=r"answer 'E' is not one of the labels A, B"):
        load_mc_file(f)


def test_mc_too_few_choices(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text(json.dumps({"question": "Q?", "choices": ["a"], "answer": 0}) + "\n")
    with pytest.raises(DataError, match="at least two text choices"):
        load_mc_file(f)


def test_mc_bad_json_line(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text('{"question": "Q?", "choices": ["a", "b"], "answer": 0}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_mc_file(f)


def test_mc_unsupported_extension(tmp_path):
    f = tmp_path / "arc.csv"
    f.write_text("x")
    with pytest.raises(DataError, match=r"use \.jsonl, \.json or \.parquet"):
        load_mc_file(f)


def test_ce_length_mismatch(llama):
    with pytest.raises(ValueError, match="one completion per instruction"):
        completion_cross_entropy(llama, ["a", "b"], ["x"])


def test_ce_all_empty(llama):
    with pytest.raises(ValueError, match="every completion is empty"):
        completion_cross_entropy(llama, ["a"], [""])


def test_report_reserved_name(llama):
    with pytest.raises(ValueError, match="'baseline' is reserved"):
        capability_report(llama, ["a"], {"baseline": []}, completions=["x"])


def test_scoped_edits_cost_where_they_edit(chat_model):
    """The completion is read as generate makes it (prompt pass, then a pass continuing the cache):
    an edit of generated positions only leaves the prompt's last logits alone and moves the
    completion's losses; an edit of prompt positions only moves the prompt's logits, and through
    the cache the losses too."""
    from sae_factory import make_sae

    from refusal_lens.capability import BaseLogits, completion_cost
    from refusal_lens.interventions import FeatureOp
    from refusal_lens.interventions.positions import ScopedFeatureIntervention
    from refusal_lens.saes import SAESet

    saes = SAESet.from_saes({1: make_sae("jumprelu", chat_model.d_model, seed=1, layer=1)})
    features = [(1, i) for i in range(96)]
    base = BaseLogits(chat_model)
    plain, _ = completion_cost(chat_model, INSTRUCTIONS, COMPLETIONS, base, batch_size=2)
    costs = {scope: completion_cost(chat_model, INSTRUCTIONS, COMPLETIONS, base, batch_size=2,
                                    interventions=[ScopedFeatureIntervention(saes, features, FeatureOp("scale", -3.0),
                                                                            scope=scope)])
             for scope in ("all", "prompt", "generated")}
    generated_ce, generated_shift = costs["generated"]
    assert generated_shift.kl == [0.0] * len(INSTRUCTIONS)
    assert generated_ce.mean != pytest.approx(plain.mean, rel=1e-3)
    prompt_ce, prompt_shift = costs["prompt"]
    assert prompt_shift.kl == pytest.approx(costs["all"][1].kl, rel=1e-5, abs=1e-7) and min(prompt_shift.kl) > 0
    assert prompt_ce.mean != pytest.approx(costs["all"][0].mean, rel=1e-3)   # "all" also edits the completion


def test_cost_from_one_pass_equals_the_separate_measures(llama):
    """``completion_cost`` = ``completion_cross_entropy`` + ``next_token_shift`` (their own passes)."""
    from refusal_lens.capability import BaseLogits, completion_cost, next_token_shift

    torch.manual_seed(0)
    push = ActivationAddition(vector=torch.randn(llama.d_model) * 5, layer=1)
    base = BaseLogits(llama)
    completion_cost(llama, INSTRUCTIONS, COMPLETIONS, base, batch_size=2)  # the unmodified pass keeps the base
    ce, shift = completion_cost(llama, INSTRUCTIONS, COMPLETIONS, base, interventions=[push], batch_size=2)
    assert ce.per_prompt == pytest.approx(completion_cross_entropy(llama, INSTRUCTIONS, COMPLETIONS, interventions=[push],
                                                                   batch_size=2).per_prompt, rel=1e-4)
    separate = next_token_shift(llama, INSTRUCTIONS, interventions=[push], batch_size=2)
    assert shift.kl == pytest.approx(separate.kl, rel=1e-4, abs=1e-7)
    assert shift.top1_unchanged == separate.top1_unchanged
