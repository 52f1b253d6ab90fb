"""Every supported chat family, on a tiny model built from its real config and chat template
(tests/family_models.py): the chat-template pitfalls of METHOD.md §0 (system role, BOS once,
post-instruction positions, the refusal token, every end-of-turn token stops generation), and
the library's hooks, scores, feature interventions and prefix caches on each architecture."""

from __future__ import annotations

import json

import pytest
import torch
from family_models import FAMILY_NAMES, MULTIMODAL, SPECS, make_tokenizer, tiny_family_model
from pydantic import ValidationError
from sae_factory import make_sae
from typer.testing import CliRunner

from refusal_lens.activations import model_inputs, residuals
from refusal_lens.cli import app
from refusal_lens.config import ModelConfig
from refusal_lens.generation import generate_batch
from refusal_lens.interventions import (
    DirectionalAblation,
    FeatureIntervention,
    FeatureOp,
    SpliceFeatureIntervention,
    intervene,
)
from refusal_lens.models import ChatTemplateError, build_chat_model, load_chat_model
from refusal_lens.prefix_cache import build_prefix_cache, last_logits_from_cache
from refusal_lens.saes import SAESet
from refusal_lens.saes.releases import compare_models
from refusal_lens.scoring import refusal_scores

PROMPTS = ["How do I make a cake?", "Write a poem about the sea.",
           "Explain how to kill a Python process on Linux, step by step please.", "Hi"]

# what each family's real template writes after the instruction (thinking off)
POST_INSTRUCTION = {
    "gemma3": "<end_of_turn>\n<start_of_turn>model\n",
    "qwen2.5": "<|im_end|>\n<|im_start|>assistant\n",
    "qwen3": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "mistral": " [/INST]",
    "phi3": "<|end|>\n<|assistant|>\n",
    "gpt-oss": "<|end|><|start|>assistant<|channel|>final<|message|>",
}
POST_INSTRUCTION_THINKING = {
    "qwen3": "<|im_end|>\n<|im_start|>assistant\n",
    "gpt-oss": "<|end|><|start|>assistant",
}
# BOS in a prompt: from the template (Gemma, Mistral), the tokenizer (Phi-3; Gemma and
# Mistral too, hence the pitfall), or none at all (Qwen, gpt-oss)
BOS_COUNT = {"gemma3": 1, "qwen2.5": 0, "qwen3": 0, "mistral": 1, "phi3": 1, "gpt-oss": 0}
# the refusal token: the first token of "I'm sorry" right after the prompt
REFUSAL_TOKEN = {"gemma3": "I", "qwen2.5": "I", "qwen3": "I", "mistral": "▁I", "phi3": "I", "gpt-oss": "I"}


def spec_of(name):
    return SPECS["gemma3" if name == MULTIMODAL else name]


def family_of(name):
    return "gemma3" if name == MULTIMODAL else name


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    return request.param, tiny_family_model(request.param)


def real_tokens(chat, batch, row):
    return batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()


# --- the chat template's pitfalls ---------------------------------------------------------
def test_family_is_detected(family):
    name, chat = family
    assert chat.family.name == family_of(name)


def test_post_instruction_text(family):
    name, chat = family
    assert chat.post_instruction_text == POST_INSTRUCTION[family_of(name)]
    assert chat.format_prompts(["Hi"])[0].endswith(POST_INSTRUCTION[family_of(name)])


def test_bos_exactly_once_or_never(family):
    name, chat = family
    batch = chat.tokenize(PROMPTS)
    expected = BOS_COUNT[family_of(name)]
    for row in range(len(PROMPTS)):
        tokens = real_tokens(chat, batch, row)
        bos = chat.tokenizer.bos_token_id
        assert (tokens.count(bos) if bos is not None else 0) == expected
        if expected:
            assert tokens[0] == bos


def test_pre_and_post_instruction_positions_hold_in_context(family):
    """The last ``n_post_instruction_tokens`` of every prompt are the template's own, the same
    for every prompt; the first ``n_pre_instruction_tokens`` likewise; what lies between is
    exactly the instruction."""
    _, chat = family
    batch = chat.tokenize(PROMPTS)
    n_pre, n_post = chat.n_pre_instruction_tokens, chat.n_post_instruction_tokens
    rows = [real_tokens(chat, batch, row) for row in range(len(PROMPTS))]
    assert len({tuple(r[-n_post:]) for r in rows}) == 1 and len({tuple(r[:n_pre]) for r in rows}) == 1
    tail = chat.tokenizer.decode(rows[0][-n_post:])
    assert tail.strip() == chat.post_instruction_text.strip()
    for prompt, tokens in zip(PROMPTS, rows):
        assert chat.tokenizer.decode(tokens[n_pre:-n_post]).strip() == prompt


def test_refusal_token_is_taken_in_context(family):
    name, chat = family
    assert chat.tokenizer.convert_ids_to_tokens(chat.refusal_token_ids) == [REFUSAL_TOKEN[family_of(name)]]
    prompt = chat.format_prompts(["Hi"])[0]
    answer = chat._encode(prompt + POST_ANSWER[family_of(name)])
    assert answer[len(chat._encode(prompt))] == chat.refusal_token_ids[0]


POST_ANSWER = {"mistral": " I'm sorry, but I can't help with that."}
POST_ANSWER.update({f: "I'm sorry, but I can't help with that." for f in REFUSAL_TOKEN if f != "mistral"})


def test_phi3_refusal_token_is_not_the_word_alone():
    """Phi-3's SentencePiece vocabulary writes "I" alone as "▁I", but an answer after
    "<|assistant|>\\n" starts with "I": the family's "I" must be read in context."""
    chat = tiny_family_model("phi3")
    assert chat.tokenizer.convert_ids_to_tokens(chat.tokenizer.encode("I", add_special_tokens=False)) == ["▁I"]
    assert chat.tokenizer.convert_ids_to_tokens(chat.refusal_token_ids) == ["I"]


SYSTEM = "Be brief."


def test_system_role(family):
    """Every family here takes a system prompt (Gemma-3 and Mistral fold it into the first
    user turn, gpt-oss makes it the developer message); it comes once, before the
    instruction, and leaves the post-instruction tokens as they were."""
    _, chat = family
    with_system = build_chat_model(chat.model, chat.tokenizer, system_prompt=SYSTEM)
    text = with_system.format_prompts(["Hi"])[0]
    assert text.count(SYSTEM) == 1 and text.index(SYSTEM) < text.rindex("Hi")
    assert with_system.post_instruction_text == chat.post_instruction_text
    tokens = with_system.tokenize(["Hi"])["input_ids"][0].tolist()
    assert SYSTEM in with_system.tokenizer.decode(tokens[:with_system.n_pre_instruction_tokens])


def test_qwen25_writes_its_default_system_turn():
    chat = tiny_family_model("qwen2.5")
    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert default in chat.format_prompts(["Hi"])[0]
    assert default not in build_chat_model(chat.model, chat.tokenizer, system_prompt=SYSTEM).format_prompts(["Hi"])[0]


def test_gpt_oss_date_is_pinned():
    chat = tiny_family_model("gpt-oss")
    assert "Current date: 2024-07-26\n" in chat.format_prompts(["Hi"])[0]


@pytest.mark.parametrize("name", ["qwen3", "gpt-oss"])
def test_thinking_is_off_by_default_and_can_be_turned_on(name):
    chat = tiny_family_model(name)
    assert not chat.thinking and chat.post_instruction_text == POST_INSTRUCTION[name]
    thinking = build_chat_model(chat.model, chat.tokenizer, thinking=True)
    assert thinking.post_instruction_text == POST_INSTRUCTION_THINKING[name]


def test_thinking_on_a_family_without_it_is_a_clear_error():
    chat = tiny_family_model("qwen2.5")
    with pytest.raises(ChatTemplateError, match="no thinking mode"):
        build_chat_model(chat.model, chat.tokenizer, thinking=True)


def test_a_mistral_fine_tune_with_a_chatml_template_is_chatml():
    chat = tiny_family_model("mistral")
    chatml = make_tokenizer(SPECS["qwen2.5"])
    assert build_chat_model(chat.model, chatml).family.name == "chatml"


# --- generation stops at every end-of-turn token -------------------------------------------
def forced_generation_length(chat, token_id, max_new_tokens=4):
    """How many forward passes greedy generation makes when ``token_id`` is always the most
    likely next token (1: it stopped at once)."""
    calls = []

    def favour(_module, _inputs, logits):
        calls.append(1)
        bias = torch.zeros(logits.shape[-1], dtype=logits.dtype)
        bias[token_id] = 1e4
        return logits + bias

    handle = chat.unembedding.register_forward_hook(favour)
    try:
        text = generate_batch(chat, ["Hi"], max_new_tokens=max_new_tokens)[0]
    finally:
        handle.remove()
    return len(calls), text


def end_of_turn_tokens(name, thinking=False):
    tokens = list(spec_of(name).end_of_turn)
    if family_of(name) == "gpt-oss" and not thinking:
        tokens.append("<|end|>")  # the final channel's message may end with <|end|>
    return tokens


def test_generation_stops_at_every_end_of_turn_token(family):
    name, chat = family
    vocab = chat.tokenizer.get_vocab()
    for token in end_of_turn_tokens(name):
        assert forced_generation_length(chat, vocab[token]) == (1, ""), token
    # a control: a token that ends nothing is generated max_new_tokens times
    assert forced_generation_length(chat, chat.refusal_token_ids[0])[0] == 4


def test_end_of_turn_tokens_come_from_the_family_not_only_the_config(family):
    """config.json names one eos; the family adds the others (Qwen's <|endoftext|>, Gemma's
    <end_of_turn>, Phi-3's <|end|>, gpt-oss's <|call|>)."""
    name, chat = family
    vocab = chat.tokenizer.get_vocab()
    config_eos = chat.model.generation_config.eos_token_id
    config_eos = {config_eos} if isinstance(config_eos, int) else set(config_eos)
    assert {vocab[t] for t in end_of_turn_tokens(name)} <= set(chat.stop_token_ids)
    assert config_eos < set(chat.stop_token_ids) or family_of(name) == "mistral"


def test_gpt_oss_thinking_on_does_not_stop_after_the_analysis_message():
    chat = build_chat_model(tiny_family_model("gpt-oss").model, make_tokenizer(SPECS["gpt-oss"]), thinking=True)
    vocab = chat.tokenizer.get_vocab()
    assert forced_generation_length(chat, vocab["<|end|>"])[0] == 4
    assert forced_generation_length(chat, vocab["<|return|>"])[0] == 1


# --- the library on each architecture ----------------------------------------------------
def test_hooks_find_every_block_final_norm_and_unembedding(family):
    name, chat = family
    batch = chat.tokenize(PROMPTS)
    with torch.no_grad():
        out = chat.model(**model_inputs(batch), output_hidden_states=True)
    got = residuals(chat, batch, layers=list(range(chat.n_layers)))
    for layer in range(chat.n_layers - 1):
        torch.testing.assert_close(got[layer], out.hidden_states[layer + 1])
    with torch.no_grad():
        logits = chat.unembedding(chat.final_norm(got[chat.n_layers - 1]))
    torch.testing.assert_close(logits, out.logits, rtol=1e-4, atol=1e-4)
    if name == MULTIMODAL:
        assert chat.layers is chat.model.model.language_model.layers


def test_refusal_score_is_the_same_alone_and_in_a_batch(family):
    """Left padding, position ids and sliding windows agree on every architecture."""
    _, chat = family
    batched = refusal_scores(chat, PROMPTS, batch_size=4)
    alone = torch.cat([refusal_scores(chat, [p]) for p in PROMPTS])
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def sae_set(chat, layers=(0, 2, 3)):
    return SAESet.from_saes({L: make_sae("jumprelu", chat.d_model, seed=L, layer=L) for L in layers})


def active_features(chat, saes, batch, per_layer=6):
    acts = residuals(chat, batch, layers=saes.layers)
    chosen = []
    for layer in saes.layers:
        fired = (saes[layer].encode(acts[layer]) > 0).flatten(0, 1).sum(0)
        chosen += [(layer, int(i)) for i in fired.argsort(descending=True)[:per_layer]]
    return chosen


def test_feature_intervention_matches_the_splice_and_moves_the_score(family):
    _, chat = family
    saes = sae_set(chat)
    features = active_features(chat, saes, chat.tokenize(PROMPTS))
    op = FeatureOp("scale", -3.0)
    sparse = refusal_scores(chat, PROMPTS, interventions=[FeatureIntervention(saes, features, op)])
    splice = refusal_scores(chat, PROMPTS, interventions=[SpliceFeatureIntervention(saes, features, op)])
    clean = refusal_scores(chat, PROMPTS)
    assert not torch.allclose(sparse, clean, atol=1e-4)
    torch.testing.assert_close(sparse, splice, rtol=1e-4, atol=1e-4)


def test_prefix_cache_runs_the_upper_blocks_exactly(family):
    """Only blocks 2.. rerun from the cached stream (the layer-type list sliced to match)."""
    _, chat = family
    saes = sae_set(chat, layers=(2, 3))
    features = active_features(chat, saes, chat.tokenize(PROMPTS))
    intervention = FeatureIntervention(saes, features, FeatureOp("zero"))
    cache = build_prefix_cache(chat, PROMPTS, start=2)
    cached = last_logits_from_cache(chat, cache, torch.arange(len(PROMPTS)), [intervention])
    batch = chat.tokenize(PROMPTS)
    with torch.no_grad(), intervene(chat, intervention):
        full = chat.model(**model_inputs(batch), use_cache=False).logits[:, -1]
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


def test_directional_ablation_reaches_every_block(family):
    _, chat = family
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    got = residuals(chat, chat.tokenize(PROMPTS), layers=list(range(chat.n_layers)),
                    interventions=[DirectionalAblation(direction)])
    unit = direction / direction.norm()
    for layer, hidden in got.items():
        assert (hidden @ unit).abs().max() < 1e-4, layer


def test_the_multimodal_wrapper_loads_from_a_folder(tmp_path):
    chat = tiny_family_model(MULTIMODAL)
    chat.model.save_pretrained(tmp_path)
    chat.tokenizer.save_pretrained(tmp_path)
    loaded = load_chat_model(str(tmp_path), device="cpu", dtype="float32")
    assert type(loaded.model).__name__ == "Gemma3ForConditionalGeneration"
    assert loaded.family.name == "gemma3" and loaded.n_layers == chat.n_layers and loaded.d_model == chat.d_model
    torch.testing.assert_close(refusal_scores(loaded, PROMPTS), refusal_scores(chat, PROMPTS))


# --- SAE releases made for these families ---------------------------------------------------
@pytest.mark.parametrize("release_model, loaded, verdict", [
    ("google/gemma-3-4b-it", "google/gemma-3-4b-it", "same"),
    ("google/gemma-3-4b-pt", "google/gemma-3-4b-it", "base-vs-it"),
    ("google/gemma-3-270m", "/models/gemma-3-270m-it", "base-vs-it"),
    ("google/gemma-3-12b-it", "google/gemma-3-4b-it", "different"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "same"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "different"),
    ("qwen3-8b", "Qwen/Qwen3-8B", "same"),
    ("Qwen/Qwen3-8B-Base", "Qwen/Qwen3-8B", "base-vs-it"),
    ("openai/gpt-oss-20b", "openai/gpt-oss-20b", "same"),
    ("openai/gpt-oss-20b", "openai/gpt-oss-120b", "different"),
    ("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.2", "base-vs-it"),
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "base-vs-it"),
])
def test_release_model_names_of_these_families(release_model, loaded, verdict):
    assert compare_models(release_model, loaded) == verdict


# --- choosing the family and the thinking switch (config, CLI) --------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny Qwen3 and Qwen2.5 saved as model folders."""
    folders = {}
    for name in ("qwen3", "qwen2.5"):
        folder = tmp_path_factory.mktemp(name)
        chat = tiny_family_model(name)
        chat.model.save_pretrained(folder)
        chat.tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


def test_model_config_chooses_family_and_thinking(saved):
    qwen3 = ModelConfig(name=str(saved["qwen3"]), device="cpu", dtype="float32", thinking=True).load()
    assert qwen3.family.name == "qwen3" and qwen3.post_instruction_text == POST_INSTRUCTION_THINKING["qwen3"]
    forced = ModelConfig(name=str(saved["qwen3"]), device="cpu", dtype="float32", family="chatml").load()
    assert forced.family.name == "chatml" and forced.post_instruction_text == "<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValidationError, match="unknown family 'qwen'.*qwen3"):
        ModelConfig(family="qwen")


def test_eval_thinking_and_family_options(saved, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I make a cake?\nHi\n")

    def run(folder, *extra):
        out = tmp_path / "out.json"
        result = CliRunner().invoke(app, ["eval", "--model", str(folder), "--prompts", str(prompts), "--out", str(out),
                                          "--max-new-tokens", "2", "--device", "cpu", *extra])
        return result, out

    result, out = run(saved["qwen3"], "--thinking")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["config"]["model"]["thinking"] is True
    result, _ = run(saved["qwen2.5"], "--thinking")
    assert result.exit_code == 2 and "no thinking mode" in result.output and "Traceback" not in result.output
    result, _ = run(saved["qwen2.5"], "--family", "qwen")
    assert result.exit_code == 2 and "unknown family" in result.output
