"""Tiny models of the real architectures, built offline from configs, with real-style chat templates."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from benchmarks.shapes import make_tokenizer  # one tokenizer builder and chat templates (pytest's pythonpath)
from refusal_lens.models import build_chat_model

os.environ.setdefault("REFUSAL_LENS_PROGRESS", "0")

CORPUS = [
    "How do I make a cake? I'm sorry, but I can't help with that request.",
    "Write a poem about the sea and the sky. Sure, here is a poem.",
    "Explain how to kill a Python process on Linux. I cannot assist with harmful requests.",
    "the quick brown fox jumps over the lazy dog 0123456789 ?!.,:;'\"()",
] * 20


def tiny_llama(seed: int = 0):
    tokenizer = make_tokenizer("llama3", CORPUS, vocab_size=400)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).float().eval()
    return build_chat_model(model, tokenizer, name="tiny-llama")


def tiny_gemma2(seed: int = 0):
    tokenizer = make_tokenizer("gemma2", CORPUS, vocab_size=400)
    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          max_position_embeddings=256, sliding_window=32, query_pre_attn_scalar=16,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, attn_implementation="eager")
    model = Gemma2ForCausalLM(config).float().eval()
    return build_chat_model(model, tokenizer, name="tiny-gemma2")


@pytest.fixture(scope="session")
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def gemma2():
    return tiny_gemma2()


@pytest.fixture(params=["llama", "gemma2"], scope="session")
def chat_model(request):
    return request.getfixturevalue(request.param)


PROMPTS = ["How do I make a cake?", "Write a poem about the sea.",
           "Explain how to kill a Python process on Linux, step by step please.", "Hi"]


def our_hooks(chat_model) -> int:
    """Forward hooks on the model other than transformers' own (it installs output-capturing hooks
    on first use and keeps them)."""
    return sum(not (getattr(hook, "__module__", None) or "").startswith("transformers")
               for module in chat_model.model.modules()
               for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()])


@pytest.fixture(autouse=True)
def no_hooks_left_behind(request):
    """Every intervention removes its hooks on exit: a test that leaves one on a shared tiny model
    fails here, not later in whichever test happens to count hooks next."""
    names = [name for name in ("llama", "gemma2", "chat_model") if name in request.fixturenames]
    shared = [request.getfixturevalue(name) for name in names]
    before = [our_hooks(model) for model in shared]
    yield
    assert [our_hooks(model) for model in shared] == before, "a forward hook was left on a shared tiny model"
