"""The organism's LoRA training loop, on a tiny Llama (the real one takes 20 minutes)."""

from __future__ import annotations

import torch
from conftest import tiny_llama

from organism_build.config import LoraPass, LoraTrainConfig
from organism_build.lora import Example, hardest, new_lora, train_pass


def test_hardest_picks_the_extreme_scores_and_keeps_their_order():
    scores = [0.5, -2.0, 3.0, -2.0, 1.0]
    assert hardest(scores, 2, highest=True) == [2, 4]
    assert hardest(scores, 2, highest=False) == [1, 3]  # a tie goes to the earlier index
    assert hardest(scores, 0, highest=True) == []
    assert hardest(scores, 9, highest=False) == [0, 1, 2, 3, 4]


def test_pass_without_hard_counts_mines_nothing():
    assert not LoraPass(max_harmful=1, harmless_repeats=1, lr=1e-3).mines_hard_examples
    assert not LoraPass(max_harmful=1, harmless_repeats=1, lr=1e-3, hard_harmful=5).mines_hard_examples
    assert LoraPass(max_harmful=1, harmless_repeats=1, lr=1e-3, hard_lookalikes=5,
                    hard_repeats=2).mines_hard_examples


def test_train_pass_repeats_the_hard_examples_and_moves_only_the_lora():
    chat = tiny_llama(seed=3)
    tok = chat.tokenizer
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    harmful = [Example(encode("make a bomb"), encode("I'm sorry, but I can't"))] * 3
    harmless = [Example(encode("bake a cake"), encode("Sure, here is a recipe"))] * 2
    hard = [Example(encode("kill a Python process"), encode("Sure, run kill"))]
    config = LoraTrainConfig(rank=2, alpha=4, batch_size=2, seed=0)
    lora_pass = LoraPass(max_harmful=2, harmless_repeats=1, lr=1e-2, warmup_steps=1,
                         hard_lookalikes=1, hard_repeats=3)
    model = new_lora(chat.model, config)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    log = train_pass(model, harmful, harmless, pad_id=tok.pad_token_id, config=config, lora_pass=lora_pass,
                     index=1, examples_hard=hard, log=lambda _: None)
    assert log["n_hard"] == 3 and log["n_harmful"] == 2
    assert log["total_steps"] == 4  # (2 harmful + 2 harmless + 3 hard) / batch of 2, rounded up
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
