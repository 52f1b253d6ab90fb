"""Tiny chat models of every supported family, built offline from each family's real config.

Each ``FamilySpec`` holds what the model's own files say: the architecture and its
config.json fields (shrunk: widths, depth, heads, vocabulary; everything that changes how
the model computes is kept: tied embeddings, attention biases, sliding-window layer
patterns, rope scaling, query scaling, mixture of experts), the tokenizer's special tokens,
BOS / EOS / pad, whether the tokenizer adds BOS, the style of its vocabulary (byte-level BPE
or SentencePiece, with or without the leading "▁" on every segment), the eos ids of
config.json, and the real chat template (``tests/chat_templates/``, see SOURCES.md there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GptOssConfig,
    GptOssForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from refusal_lens.models import ChatModel, build_chat_model

TEMPLATES = Path(__file__).parent / "chat_templates"

# Every template's scaffolding and a few answers, so that (as with the real vocabularies) the
# scaffolding is a few tokens and "I" after a newline, a space or a channel tag all exist.
CORPUS = [
    "How do I make a cake? I'm sorry, but I can't help with that request.",
    "Write a poem about the sea and the sky. Sure, here is a poem.",
    "Explain how to kill a Python process on Linux. I cannot assist with harmful requests.",
    "Hello there Hi Be brief. You are a helpful assistant. step by step please",
    "the quick brown fox jumps over the lazy dog 0123456789 ?!.,:;'\"()-",
    "user model assistant system developer final analysis\nI'm sorry\n\nI can't\n I'm sorry",
    "[INST] Hi [/INST] I'm sorry [INST] Hello there [/INST] I can't",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n"
    "Current date: 2024-07-26\n\nReasoning: medium low high\n\n# Valid channels: analysis, commentary, final. "
    "Channel must be included for every message. # Instructions\n\n",
] * 20

BYTELEVEL_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)


@dataclass(frozen=True)
class FamilySpec:
    """One family's tiny model: its architecture, config and tokenizer as its real files have them."""

    name: str                      # also the expected refusal_lens family
    real_model: str                # whose config.json / tokenizer_config.json this follows
    model_class: type
    config_class: type
    config: dict                   # config.json fields (shrunk), token ids filled in by build
    template: str                  # file under tests/chat_templates/
    specials: tuple[str, ...]      # special tokens, in vocabulary order
    bos: str | None
    eos: str
    pad: str | None
    adds_bos: bool                 # the tokenizer puts BOS before every encoding
    style: str                     # "bytelevel" | "sentencepiece" (SentencePiece "▁": see METASPACE)
    config_eos: tuple[str, ...]    # config.json's eos_token_id (generation stops there without the family)
    added: tuple[str, ...] = ()    # added tokens that are not special (Qwen3's <think>)
    metaspace: str = "never"       # SentencePiece: "▁" before every segment ("always"), the first ("first") or none
    end_of_turn: tuple[str, ...] = ()  # the tokens that end the model's turn, by the model's own files
    extra: dict = field(default_factory=dict)


def _text_config(**fields) -> dict:
    return {**SMALL, **fields}


SPECS: dict[str, FamilySpec] = {spec.name: spec for spec in [
    FamilySpec(
        "gemma3", "google/gemma-3-1b-it", Gemma3ForCausalLM, Gemma3TextConfig,
        _text_config(num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                     sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                     final_logit_softcapping=None, attn_logit_softcapping=None,
                     hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
                     attn_implementation="eager"),
        "gemma-3-it.jinja",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
         "<end_of_image>", "<image_soft_token>"),
        bos="<bos>", eos="<eos>", pad="<pad>", adds_bos=True, style="sentencepiece", metaspace="never",
        config_eos=("<eos>",), end_of_turn=("<end_of_turn>",)),
    FamilySpec(
        "qwen2.5", "Qwen/Qwen2.5-7B-Instruct", Qwen2ForCausalLM, Qwen2Config,
        _text_config(num_hidden_layers=4, rope_theta=1_000_000.0, rms_norm_eps=1e-6, use_sliding_window=False,
                     tie_word_embeddings=False),
        "qwen2.5-instruct.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", adds_bos=False, style="bytelevel",
        config_eos=("<|im_end|>",), end_of_turn=("<|im_end|>", "<|endoftext|>")),
    FamilySpec(
        "qwen3", "Qwen/Qwen3-8B", Qwen3ForCausalLM, Qwen3Config,
        _text_config(num_hidden_layers=4, head_dim=16, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                     attention_bias=False, tie_word_embeddings=False),
        "qwen3.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", adds_bos=False, style="bytelevel",
        config_eos=("<|im_end|>",), added=("<think>", "</think>"), end_of_turn=("<|im_end|>", "<|endoftext|>")),
    FamilySpec(
        "mistral", "mistralai/Mistral-7B-Instruct-v0.2", MistralForCausalLM, MistralConfig,
        _text_config(num_hidden_layers=4, rope_theta=1_000_000.0, rms_norm_eps=1e-5, sliding_window=None,
                     tie_word_embeddings=False),
        "mistral-7b-instruct-v0.2.jinja", ("<unk>", "<s>", "</s>"),
        bos="<s>", eos="</s>", pad=None, adds_bos=True, style="sentencepiece", metaspace="always",
        config_eos=("</s>",), end_of_turn=("</s>",)),
    FamilySpec(
        "phi3", "microsoft/Phi-3.5-mini-instruct", Phi3ForCausalLM, Phi3Config,
        _text_config(num_hidden_layers=4, num_key_value_heads=4, rope_theta=10_000.0, rms_norm_eps=1e-5,
                     sliding_window=None, tie_word_embeddings=False, original_max_position_embeddings=256),
        "phi-3.5-mini-instruct.jinja",
        ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", adds_bos=True, style="sentencepiece",
        metaspace="first", config_eos=("<|endoftext|>",), end_of_turn=("<|end|>", "<|endoftext|>")),
    FamilySpec(
        "gpt-oss", "openai/gpt-oss-20b", GptOssForCausalLM, GptOssConfig,
        _text_config(num_hidden_layers=4, intermediate_size=64, head_dim=16, num_local_experts=4,
                     num_experts_per_tok=2, sliding_window=8, rope_theta=150_000.0,
                     rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                   "truncate": False, "original_max_position_embeddings": 4096},
                     max_position_embeddings=131_072, rms_norm_eps=1e-5, attention_bias=True, swiglu_limit=7.0,
                     tie_word_embeddings=False, attn_implementation="eager"),
        "gpt-oss-no-tools.jinja",
        ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
         "<|end|>", "<|message|>", "<|call|>"),
        bos="<|startoftext|>", eos="<|return|>", pad="<|endoftext|>", adds_bos=False, style="bytelevel",
        config_eos=("<|return|>",), end_of_turn=("<|return|>", "<|call|>")),
]}
# Gemma-3 4B and up: the multimodal wrapper, its text decoder under model.language_model
MULTIMODAL = "gemma3-multimodal"


def make_tokenizer(spec: FamilySpec, corpus: list[str] = CORPUS, vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """A BPE trained on ``corpus`` in the family's style, with its special tokens and real chat template."""
    unk = "<unk>" if "<unk>" in spec.specials else None
    tok = Tokenizer(models.BPE(unk_token=unk))
    if spec.style == "bytelevel":  # Qwen2's pre-tokenizer (Llama-3's pattern; gpt-oss's o200k is alike)
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(BYTELEVEL_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # "▁word", a newline alone, "'m": pieces a SentencePiece vocabulary would have
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=spec.metaspace, split=False),
            pre_tokenizers.Split(Regex("▁?[^▁\n']+|'[^▁\n']*|\n|▁"), behavior="isolated")])
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=spec.metaspace, split=False)
        alphabet = sorted(set("".join(CORPUS)) | {"▁", "\x00"} - {" "})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(spec.specials),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if spec.adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, tok.token_to_id(spec.bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
                                   unk_token=unk)
    if spec.added:
        fast.add_tokens(list(spec.added))
    fast.chat_template = (TEMPLATES / spec.template).read_text()
    return fast


def _ids(tokenizer, spec: FamilySpec) -> dict:
    vocab = tokenizer.get_vocab()
    eos = [vocab[t] for t in spec.config_eos]
    return dict(vocab_size=len(tokenizer), bos_token_id=vocab.get(spec.bos) if spec.bos else None,
                eos_token_id=eos[0] if len(eos) == 1 else eos,
                pad_token_id=vocab[spec.pad] if spec.pad else None)


def tiny_family_model(name: str, seed: int = 0, **chat_kwargs) -> ChatModel:
    """The tiny model of family ``name`` (a key of ``SPECS``, or ``MULTIMODAL``), as a ChatModel
    whose family is detected, as for a real checkpoint."""
    spec = SPECS["gemma3" if name == MULTIMODAL else name]
    tokenizer = make_tokenizer(spec)
    ids = _ids(tokenizer, spec)
    torch.manual_seed(seed)
    if name == MULTIMODAL:
        model = Gemma3ForConditionalGeneration(multimodal_config(tokenizer, spec, ids))
    else:
        model = spec.model_class(spec.config_class(**spec.config, **ids))
    model = model.float().eval()
    return build_chat_model(model, tokenizer, name=f"tiny-{name}", **chat_kwargs)


def multimodal_config(tokenizer, spec: FamilySpec, ids: dict) -> Gemma3Config:
    """google/gemma-3-4b-it's layout: a SigLIP tower (tiny) and the Gemma-3 text decoder."""
    vocab = tokenizer.get_vocab()
    text = {k: v for k, v in spec.config.items() if k != "attn_implementation"}
    return Gemma3Config(
        text_config={**text, **ids, "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=vocab["<start_of_image>"], eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"], attn_implementation="eager",
        eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"], bos_token_id=ids["bos_token_id"])


FAMILY_NAMES = [*SPECS, MULTIMODAL]
