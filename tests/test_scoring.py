"""Refusal score (METHOD.md §1) and greedy generation."""

import torch
from conftest import PROMPTS

from refusal_lens.activations import model_inputs
from refusal_lens.generation import generate, generate_scored
from refusal_lens.interventions import DirectionalAblation
from refusal_lens.scoring import refusal_score_from_logits, refusal_scores


def test_score_is_log_odds_of_refusal_tokens():
    logits = torch.randn(3, 50)
    ids = [4, 7]
    p = logits.softmax(-1)[:, ids].sum(-1)
    torch.testing.assert_close(refusal_score_from_logits(logits, ids), (p.log() - (1 - p).log()))


def test_score_alone_equals_score_in_left_padded_batch(chat_model):
    batch_scores = refusal_scores(chat_model, PROMPTS, batch_size=len(PROMPTS))
    for prompt, in_batch in zip(PROMPTS, batch_scores):
        alone = refusal_scores(chat_model, [prompt])[0]
        torch.testing.assert_close(alone, in_batch, rtol=1e-4, atol=1e-4)


def test_score_matches_full_forward(llama):
    batch = llama.tokenize(PROMPTS)
    with torch.no_grad():
        logits = llama.model(**model_inputs(batch)).logits[:, -1]
    torch.testing.assert_close(refusal_scores(llama, PROMPTS), refusal_score_from_logits(logits, llama.refusal_token_ids))


def test_greedy_generation_is_deterministic_and_batch_invariant(chat_model):
    together = generate(chat_model, PROMPTS, max_new_tokens=8, batch_size=4)
    alone = [generate(chat_model, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert together == alone
    assert all(isinstance(t, str) for t in together)


def test_scores_read_from_the_generation_equal_a_separate_forward_pass(chat_model):
    """``generate_scored`` reads the refusal score from the generation's prompt pass: the same
    answers as ``generate`` and the same scores as ``refusal_scores``, plain and edited."""
    torch.manual_seed(0)
    for interventions in ([], [DirectionalAblation(torch.randn(chat_model.d_model))]):
        answers, scores = generate_scored(chat_model, PROMPTS, max_new_tokens=6, batch_size=3,
                                          interventions=interventions)
        assert answers == generate(chat_model, PROMPTS, max_new_tokens=6, batch_size=3, interventions=interventions)
        torch.testing.assert_close(scores, refusal_scores(chat_model, PROMPTS, batch_size=3,
                                                          interventions=interventions), rtol=1e-4, atol=1e-4)


def test_scores_read_from_the_generation_come_before_its_logits_processors(llama):
    """A repetition penalty in the model's generation config changes generate's processed
    scores, not the refusal score (Qwen's config sets one)."""
    config = llama.model.generation_config
    saved = config.repetition_penalty
    config.repetition_penalty = 50.0
    try:
        _, scores = generate_scored(llama, PROMPTS, max_new_tokens=2)
    finally:
        config.repetition_penalty = saved
    torch.testing.assert_close(scores, refusal_scores(llama, PROMPTS), rtol=1e-4, atol=1e-4)


def test_generation_stops_on_end_of_turn(gemma2):
    """Force <end_of_turn> to be the argmax: generation must stop right there (not only on EOS)."""
    end_of_turn = gemma2.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    head = gemma2.model.lm_head
    original = head.weight.data.clone()
    try:
        head.weight.data[end_of_turn] = gemma2.model.get_input_embeddings().weight.data.sum(0) * 0  # reset
        bias = torch.zeros(head.weight.shape[0])
        bias[end_of_turn] = 1e4
        hook = head.register_forward_hook(lambda m, a, out: out + bias)
        try:
            with torch.no_grad():
                ids = gemma2.model.generate(**gemma2.tokenize(["Hi"]), max_new_tokens=5, do_sample=False,
                                            eos_token_id=gemma2.stop_token_ids,
                                            pad_token_id=gemma2.tokenizer.pad_token_id)
        finally:
            hook.remove()
        assert ids.shape[1] == gemma2.tokenize(["Hi"])["input_ids"].shape[1] + 1
    finally:
        head.weight.data.copy_(original)
