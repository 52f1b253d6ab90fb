"""Model shapes built from configs with random weights, offline, plus a small chat tokenizer.

Speed depends on the shapes, not on the weights: the model is built from the real
architecture's config (vocabulary size included) with random weights, and the tokenizer is a
tiny byte-level BPE with the real chat template, so ``refusal_lens`` runs its own code paths
(templates, left padding, stop tokens) without downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from refusal_lens.models import ChatModel, build_chat_model

GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
LLAMA31_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}"
    "{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
WORDS = ("how do I make a cake write poem about the sea and sky explain kill Python process on Linux "
         "step by step please tell me story history of science build bridge garden recipe").split()
# the templates' own text is in the corpus, so that (as with the real tokenizers) the chat
# scaffolding is a few tokens and most of a prompt is the instruction
TEMPLATE_TEXT = ("system user assistant model\n\nCutting Knowledge Date: December 2023\n"
                 "Today Date: 26 Jul 2024\n\n")
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) + " I'm sorry, I can't help. Sure, here is 0123456789 ?!.,:;'\"()"
          for i in range(len(WORDS))] * 4 + [TEMPLATE_TEXT] * 40


@dataclass(frozen=True)
class Shape:
    name: str
    family: str            # gemma2 | llama3
    config: dict           # the HF config fields of the real model
    sae_width: int         # Gemma Scope 16k at every layer; Llama Scope 32k (8x)
    sae_label: str

    @property
    def n_layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def d_model(self) -> int:
        return self.config["hidden_size"]


SHAPES: dict[str, Shape] = {
    "gemma2-2b": Shape("gemma2-2b", "gemma2", dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
        sliding_window=4096, query_pre_attn_scalar=256, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        tie_word_embeddings=True), 16384, "Gemma Scope size: JumpReLU 16k, every layer"),
    "llama31-8b": Shape("llama31-8b", "llama3", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, tie_word_embeddings=False), 32768, "Llama Scope size: JumpReLU 32k (8x), every layer"),
    # for the CPU smoke test and for developing the script
    "tiny-gemma2": Shape("tiny-gemma2", "gemma2", dict(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=64,
        query_pre_attn_scalar=16), 256, "tiny JumpReLU 256"),
    "tiny-llama": Shape("tiny-llama", "llama3", dict(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512), 256, "tiny JumpReLU 256"),
}


FAMILY_TOKENS = {  # special tokens, bos, eos, chat template
    "gemma2": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", GEMMA2_TEMPLATE),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>", LLAMA31_TEMPLATE),
}


def make_tokenizer(family: str, corpus: list[str] = CORPUS, vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus``, with the family's special tokens, BOS and chat template."""
    specials, bos, eos, template = FAMILY_TOKENS[family]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", *specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>")
    fast.chat_template = template
    return fast


def build_model(shape: Shape, device: str, dtype: torch.dtype, seed: int = 0) -> ChatModel:
    """The model of ``shape`` with random weights (HF's own initialisation), on ``device``."""
    tokenizer = make_tokenizer(shape.family)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config_cls, model_cls = ((Gemma2Config, Gemma2ForCausalLM) if shape.family == "gemma2"
                             else (LlamaConfig, LlamaForCausalLM))
    config = config_cls(**shape.config, **ids)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return build_chat_model(model, tokenizer, name=f"{shape.name} (random weights)")


def instructions_of_length(chat_model: ChatModel, n: int, n_tokens: int, seed: int = 0,
                           unique: int = 64) -> list[str]:
    """``n`` instructions whose chat-formatted prompts are ``n_tokens`` tokens long (shorter ones,
    if the template alone is longer, are left-padded by ``tokenize``); ``unique`` different
    ones, repeated (speed does not depend on which words)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(min(n, unique)):
        words = []
        text = ""
        while True:
            candidate = " ".join([*words, WORDS[int(torch.randint(len(WORDS), (1,), generator=gen))]])
            if len(chat_model._encode(chat_model.format_prompts([candidate])[0])) > n_tokens:
                break
            words.append(candidate.rsplit(" ", 1)[-1])
            text = candidate
        while len(chat_model._encode(chat_model.format_prompts([text + " a"])[0])) <= n_tokens \
                and len(chat_model._encode(chat_model.format_prompts([text])[0])) < n_tokens:
            text += " a"
        out.append(text or "Hi")
    return [out[i % len(out)] for i in range(n)]
