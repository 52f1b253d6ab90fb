"""Chat formatting pitfalls (METHOD.md §0) and bad-input errors of the model layer."""

import pytest
import torch
from conftest import PROMPTS, tiny_llama

from refusal_lens.models import ChatTemplateError, ModelLoadError, PromptTooLongError, build_chat_model, load_chat_model
from refusal_lens.models.families import PINNED_DATE


def test_bos_exactly_once(chat_model):
    batch = chat_model.tokenize(PROMPTS)
    bos = chat_model.tokenizer.bos_token_id
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        real = ids[mask.bool()].tolist()
        assert real[0] == bos and real.count(bos) == 1


def test_left_padding_with_attention_mask(chat_model):
    batch = chat_model.tokenize(["Hi", "A much longer instruction than the first one, really."])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert (batch["input_ids"][0][~mask[0].bool()] == chat_model.tokenizer.pad_token_id).all()


def test_llama31_date_is_pinned(llama):
    assert f"Today Date: {PINNED_DATE}" in llama.format_prompts(["Hi"])[0]


def test_gemma2_template_and_stop_tokens(gemma2):
    text = gemma2.format_prompts(["Hi"])[0]
    assert text.endswith("<start_of_turn>model\n")
    assert gemma2.post_instruction_text == "<end_of_turn>\n<start_of_turn>model\n"
    vocab = gemma2.tokenizer.get_vocab()
    assert {vocab["<end_of_turn>"], vocab["<eos>"]} <= set(gemma2.stop_token_ids)


def test_llama_stop_tokens_include_eot(llama):
    vocab = llama.tokenizer.get_vocab()
    assert {vocab["<|eot_id|>"], vocab["<|end_of_text|>"]} <= set(llama.stop_token_ids)


def test_refusal_tokens_configurable(llama):
    custom = build_chat_model(llama.model, llama.tokenizer, refusal_tokens=["I", "Sorry"])
    assert len(custom.refusal_token_ids) >= len(llama.refusal_token_ids)
    assert llama.refusal_token_ids == [llama.tokenizer.encode("I", add_special_tokens=False)[0]]


def test_gemma2_system_prompt_is_a_clear_error(gemma2):
    with pytest.raises(ChatTemplateError, match="no system role"):
        build_chat_model(gemma2.model, gemma2.tokenizer, system_prompt="Be nice.")


def test_missing_chat_template_is_a_clear_error():
    chat = tiny_llama()
    chat.tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        build_chat_model(chat.model, chat.tokenizer)


def test_prompt_longer_than_context_is_a_clear_error(llama):
    with pytest.raises(PromptTooLongError, match="exceeds"):
        llama.tokenize(["word " * 400])
    with pytest.raises(PromptTooLongError, match="max-new-tokens"):
        llama.tokenize(["word " * 30], max_new_tokens=250)


def test_empty_prompt_set_is_a_clear_error(llama):
    with pytest.raises(ValueError, match="empty"):
        llama.tokenize([])


def test_layer_out_of_range_is_a_clear_error(llama):
    with pytest.raises(IndexError, match="out of range.*4 layers"):
        llama.check_layer(7)


@pytest.mark.parametrize("name, message", [
    ("no-such-model", "Unknown model"),
    ("/definitely/missing/model.gguf", "does not exist"),
])
def test_unknown_model_is_a_clear_error(name, message):
    with pytest.raises(ModelLoadError, match=message):
        load_chat_model(name)


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_chat_model(str(tmp_path))


def test_load_saved_folder_roundtrip(tmp_path, llama):
    llama.model.save_pretrained(tmp_path)
    llama.tokenizer.save_pretrained(tmp_path)
    loaded = load_chat_model(str(tmp_path), device="cpu", dtype="float32")
    assert loaded.family.name == "llama3" and loaded.n_layers == 4
    batch = llama.tokenize(PROMPTS)
    with torch.no_grad():
        a = llama.model(**batch).logits
        b = loaded.model(**batch).logits
    torch.testing.assert_close(a, b)


def test_gguf_roundtrip(tmp_path, llama):
    """A GGUF file loads through transformers' GGUF support (written here with the gguf package)."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    _write_llama_gguf(gguf, llama, path)
    loaded = load_chat_model(str(path), device="cpu", dtype="float32")
    assert loaded.n_layers == llama.n_layers and loaded.d_model == llama.d_model


def _write_llama_gguf(gguf, chat, path):
    """A minimal llama GGUF: the tiny model's weights (f32) and its tokenizer as gpt2-style BPE."""
    import json

    model, tok = chat.model, chat.tokenizer
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m
              for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name.endswith(".weight"):
            gguf_name = names.get_name(name.removesuffix(".weight"))
            if gguf_name is None:
                continue
            data = tensor.float().numpy()
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
                data = _permute_for_gguf(data, heads)
            writer.add_tensor(gguf_name + ".weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute_for_gguf(weights, n_head):
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


# --- named sources (the registry) -------------------------------------------------------
@pytest.fixture
def model_sources(monkeypatch):
    """A fresh registry (the built-in names only), so that a test's names do not leak."""
    from refusal_lens.models import registry
    from refusal_lens.named_sources import NamedSources

    monkeypatch.setattr(registry, "_sources", NamedSources(registry.MODEL_SOURCES_GROUP,
                                                           registry.BUILTIN_MODEL_SOURCES))
    return registry


def _tiny_source(device=None, dtype=None):
    return tiny_llama()


def test_a_registered_name_loads_through_its_loader(model_sources):
    calls = []
    model_sources.register_model_source("tiny", lambda **kw: calls.append(kw) or tiny_llama())
    assert load_chat_model("tiny", device="cpu").n_layers == 4
    assert calls == [{"device": "cpu", "dtype": None}]
    assert model_sources.named_model_sources() == ["organism", "tiny"]


def test_an_entry_point_registers_a_name(model_sources, monkeypatch):
    from importlib.metadata import EntryPoint

    import refusal_lens.named_sources

    point = EntryPoint(name="tiny-ep", value=f"{__name__}:_tiny_source", group="refusal_lens.models")
    monkeypatch.setattr(refusal_lens.named_sources, "entry_points",
                        lambda group: [point] if group == "refusal_lens.models" else [])
    assert "tiny-ep" in model_sources.named_model_sources()
    assert load_chat_model("tiny-ep").name == "tiny-llama"


def test_unknown_model_error_lists_the_registered_names(model_sources):
    model_sources.register_model_source("tiny", _tiny_source)
    with pytest.raises(ModelLoadError, match="registered name \\('organism', 'tiny'\\)"):
        load_chat_model("no-such-model")


def test_the_organism_is_named_not_imported_by_the_low_layers():
    import subprocess
    import sys

    code = ("import sys, refusal_lens.models, refusal_lens.saes\n"
            "from refusal_lens.models.registry import named_model_sources\n"
            "from refusal_lens.saes.registry import named_sae_sources\n"
            "assert 'organism' in named_model_sources() and 'organism' in named_sae_sources()\n"
            "print(sorted(m for m in sys.modules if m.startswith('refusal_lens.organism')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
