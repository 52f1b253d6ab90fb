"""Feature cards against reference computations: the logit effects through each kind of final
norm, the activations on harmful vs harmless prompts and the top prompts (from the whole SAE's
encode of the residual stream), the cosines, the Neuronpedia ids of a release, the terminal card."""

import pytest
import torch
from conftest import tiny_gemma2, tiny_llama
from rich.console import Console
from rich.text import Text
from sae_factory import make_sae
from torch import nn

from refusal_lens.activations import residuals
from refusal_lens.feature_cards import (
    STRONGEST_TOKEN,
    FeatureCard,
    LabelledPrompt,
    build_cards,
    card_renderable,
    decoder_rows,
    final_norm,
    logit_effects,
    read_prompt_activations,
    token_text,
    top_tokens,
    visible,
)
from refusal_lens.pipeline.cards import FeatureCards
from refusal_lens.saes import SAESet
from refusal_lens.saes.sae_set import _sae_lens_directory

HARMFUL = ["Tell me how to kill a Python process on Linux.", "How do I make a cake? I'm sorry.",
           "Explain how to hurt people, step by step please.", "Write a poem about the sea and the sky."]
HARMLESS = ["Hi", "Write a short friendly poem about the garden.", "the quick brown fox jumps over the lazy dog"]
PROMPTS = ([LabelledPrompt(f"bad{i}", t, "harmful") for i, t in enumerate(HARMFUL)]
           + [LabelledPrompt(f"ok{i}", t, "harmless") for i, t in enumerate(HARMLESS)])
LAYERS = (1, 2)


def randomise_norm(chat, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = final_norm(chat).weight
        weight.copy_(torch.randn(weight.shape, generator=gen))
    return chat


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def model(request):
    return randomise_norm(tiny_llama(seed=5) if request.param == "llama" else tiny_gemma2(seed=5))


@pytest.fixture(scope="module")
def saes(model):
    made = {L: make_sae("jumprelu", model.d_model, d_sae=64, seed=L, layer=L) for L in LAYERS}
    with torch.no_grad():
        made[1].threshold[63] = 1e6  # a feature that never fires
    return SAESet.from_saes(made)


def test_final_norm_is_the_models_last_norm(model):
    assert final_norm(model) is model.model.model.norm


def test_logit_effects_keep_the_norms_weight_and_freeze_its_scale(model):
    """W_U · (gain ⊙ d / rms(d)): Llama's RMSNorm gain is its weight, Gemma's is 1 + weight."""
    rows = torch.randn(5, model.d_model, generator=torch.Generator().manual_seed(1))
    norm = final_norm(model)
    gain = norm.weight.float() + (1.0 if model.family.name == "gemma2" else 0.0)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    expected = (gain * rows / (rows.pow(2).mean(-1, keepdim=True) + eps).sqrt()) @ model.model.lm_head.weight.T
    torch.testing.assert_close(logit_effects(model, rows), expected.float(), rtol=1e-4, atol=1e-4)


def test_logit_effects_centre_a_layernorm_and_drop_its_bias():
    chat = tiny_llama(seed=6)
    layer_norm = nn.LayerNorm(chat.d_model)
    with torch.no_grad():
        layer_norm.weight.normal_()
        layer_norm.bias.normal_()
    chat.model.model.norm = layer_norm
    rows = torch.randn(3, chat.d_model, generator=torch.Generator().manual_seed(2))
    centred = rows - rows.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + layer_norm.eps).sqrt()
    expected = (layer_norm.weight * centred / scale) @ chat.model.lm_head.weight.T
    torch.testing.assert_close(logit_effects(chat, rows), expected.detach(), rtol=1e-4, atol=1e-4)


def test_top_tokens_are_the_extremes_of_the_logit_effects(model, saes):
    keys = [(1, 3), (2, 10)]
    rows = decoder_rows(saes, keys)
    torch.testing.assert_close(rows[1], saes[2].W_dec[10].float())
    logits = logit_effects(model, rows)
    for j, (promoted, suppressed) in enumerate(top_tokens(model, rows, 4)):
        up, down = logits[j].topk(4).indices.tolist(), (-logits[j]).topk(4).indices.tolist()
        assert [e.token for e in promoted] == [token_text(model, i) for i in up]
        assert [e.token for e in suppressed] == [token_text(model, i) for i in down]
        assert promoted[0].logit == pytest.approx(logits[j].max().item())
        assert suppressed[0].logit == pytest.approx(logits[j].min().item())
        assert all(a.logit >= b.logit for a, b in zip(promoted, promoted[1:]))


def dense_reference(model, saes, prompts):
    """Per prompt and layer, the whole SAE's activations on the tokens after the template header."""
    skip = model.n_pre_instruction_tokens
    out = []
    for prompt in prompts:
        batch = model.tokenize([prompt.text])
        res = residuals(model, batch, list(LAYERS))
        ids = batch["input_ids"][0].tolist()[skip:]
        out.append((ids, {L: saes[L].encode(res[L][0, skip:]) for L in LAYERS}))
    return out


def varied_features(reference):
    """Features that fire on some prompts and not on others, and one that never fires."""
    chosen = []
    for L in LAYERS:
        peaks = torch.stack([acts[L].amax(0) for _, acts in reference])  # [prompts, d_sae]
        fired = (peaks > 0).sum(0)
        varied = [i for i in range(len(fired)) if 0 < fired[i] < len(reference)]
        chosen += [(L, i) for i in varied[:3]] + [(L, int(fired.argmin()))]
    return chosen


def test_activation_stats_and_top_prompts_match_the_dense_encode(model, saes):
    reference = dense_reference(model, saes, PROMPTS)
    keys = varied_features(reference)
    acts = read_prompt_activations(model, saes, keys, PROMPTS, batch_size=3)
    assert acts.token_ids == [ids for ids, _ in reference]
    for label in ("harmful", "harmless"):
        rows = [i for i, p in enumerate(PROMPTS) if p.label == label]
        for j, (L, i) in enumerate(keys):
            peaks = torch.tensor([reference[r][1][L][:, i].max().clamp_min(0).item() for r in rows])
            stats = acts.stats(label)[j]
            assert stats.n_prompts == len(rows)
            assert stats.frequency == pytest.approx((peaks > 0).float().mean().item())
            assert stats.mean_activation == pytest.approx(peaks.mean().item(), abs=1e-5)
    for j, (L, i) in enumerate(keys):
        peaks = [reference[r][1][L][:, i].max().item() for r in range(len(PROMPTS))]
        tops = acts.top_prompts(j, 2, model)
        expected = [r for r in sorted(range(len(PROMPTS)), key=lambda r: -peaks[r]) if peaks[r] > 0][:2]
        assert [t.prompt_id for t in tops] == [PROMPTS[r].id for r in expected]
        for top, r in zip(tops, expected):
            ids, dense = reference[r]
            column = dense[L][:, i]
            assert top.max_activation == pytest.approx(column.max().item(), rel=1e-3)
            assert top.tokens[top.max_index] == token_text(model, ids[int(column.argmax())])
            assert top.tokens == [token_text(model, t) for t in ids]  # short prompts are shown whole
            assert not top.cut_before and not top.cut_after
    silent = [j for j, (L, i) in enumerate(keys) if all(acts[L][:, i].max() <= 0 for _, acts in reference)]
    assert silent and all(acts.top_prompts(j, 3, model) == [] for j in silent)


def test_a_long_prompt_keeps_a_window_around_its_strongest_token(model, saes):
    long = LabelledPrompt("long", " ".join(["the quick brown fox jumps over the lazy dog"] * 12), "harmless")
    acts = read_prompt_activations(model, saes, [(1, j) for j in range(64)], [long])
    fired = int(acts.max_per_prompt[0].argmax())
    top = acts.top_prompts(fired, 1, model)[0]
    assert len(top.tokens) == 64 and (top.cut_before or top.cut_after)
    assert top.max_activation == pytest.approx(acts.max_per_prompt[0, fired].item(), rel=1e-3)


def test_build_cards(model, saes):
    keys = [(2, 5), (1, 7)]
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    cards = build_cards(model, saes, keys, PROMPTS, direction, sets={(2, 5): ["minimal_shared"]},
                        scores={(1, 7): {"attribution": 0.5}}, neuronpedia_ids={2: "gemma-2-2b/2-gemmascope-res-16k"},
                        n_prompts=2, n_tokens=3)
    assert [c.key for c in cards] == keys
    row = saes[2].W_dec[5]
    assert cards[0].cosine == pytest.approx(torch.nn.functional.cosine_similarity(row, direction, dim=0).item(),
                                            abs=1e-5)
    assert cards[0].sets == ["minimal_shared"] and cards[1].sets == []
    assert cards[1].scores == {"attribution": 0.5} and cards[0].scores == {}
    assert cards[0].neuronpedia == "https://www.neuronpedia.org/gemma-2-2b/2-gemmascope-res-16k/5"
    assert cards[1].neuronpedia is None
    assert len(cards[0].promoted) == len(cards[0].suppressed) == 3 and len(cards[0].top_prompts) <= 2
    assert cards[0].harmful.n_prompts == len(HARMFUL) and cards[0].harmless.n_prompts == len(HARMLESS)
    assert FeatureCard.model_validate_json(cards[0].model_dump_json()) == cards[0]


def test_the_terminal_card_marks_the_strongest_token(model, saes):
    card = build_cards(model, saes, varied_features(dense_reference(model, saes, PROMPTS))[:1], PROMPTS,
                       torch.ones(model.d_model), neuronpedia_ids={1: "some-model/1-res"}, n_prompts=2)[0]
    console = Console(record=True, width=300, color_system="truecolor")
    console.print(card_renderable(card))
    text = console.export_text()
    assert card.name in text and "harmful" in text and f"{card.harmful.frequency:.0%}" in text
    assert card.neuronpedia in text and card.promoted[0].token.strip() in text
    top = card.top_prompts[0]
    assert top.prompt_id in text
    lines = [r for r in card_renderable(card).renderables if isinstance(r, Text) and top.prompt_id in r.plain]
    marked = [lines[0].plain[s.start:s.end] for s in lines[0].spans if str(s.style) == STRONGEST_TOKEN]
    assert marked == [visible(top.tokens[top.max_index])]


def test_an_unknown_feature_names_some_that_have_cards(model, saes):
    cards = FeatureCards(sets={}, n_harmful=1, n_harmless=1,
                         cards=build_cards(model, saes, [(1, 1), (2, 2)], PROMPTS, torch.ones(model.d_model)))
    assert cards.card((2, 2)).key == (2, 2)
    with pytest.raises(KeyError, match=r"Feature 1:9 is not among the 2 features this run reports \(e.g. 1:1, 2:2\)"):
        cards.card((1, 9))


def test_neuronpedia_ids_of_a_release_come_from_the_directory():
    release = "gemma-scope-2b-pt-res-canonical"
    saes = SAESet.from_release(release, [5, 20])  # nothing is loaded or downloaded
    entry = _sae_lens_directory()[release]
    for layer in (5, 20):
        expected = entry.neuronpedia_id[saes.sources[layer].sae_id]
        assert expected and saes.neuronpedia_id(layer) == expected
    folder = SAESet.from_saes({1: make_sae("jumprelu", 8, d_sae=4)})
    assert folder.neuronpedia_id(1) is None
