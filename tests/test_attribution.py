"""Exactness of the attribution (METHOD.md §5) against a slow dense reference, in float64."""

import pytest
import torch
from conftest import PROMPTS, tiny_gemma2, tiny_llama
from sae_factory import make_sae

from refusal_lens.activations import model_inputs, residuals
from refusal_lens.attribution import (activation_difference_features, attribute, attribution_features,
                                      cosine_features, cossim_ap_features, feature_scores, interpolation_points,
                                      jailbreak_tokens)
from refusal_lens.attribution.metric import contiguous_head_input
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.interventions import DirectionalAblation, intervene
from refusal_lens.saes import SAESet

LAYERS = [0, 2, 3]  # 3 is the last block: nothing runs above it but the final norm and the head
TIGHT = {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(scope="module")
def llama64():
    return _double(tiny_llama())


@pytest.fixture(scope="module")
def gemma32():
    """float32: transformers' eager attention takes its softmax in float32, where a float64
    model's mask minimum is -inf, and padded rows turn to NaN."""
    return tiny_gemma2()


def _double(chat_model):
    chat_model.model.double()
    return chat_model


def saes_for(chat_model, architecture="jumprelu", layers=LAYERS, **kwargs):
    return SAESet.from_saes({L: make_sae(architecture, chat_model.d_model, seed=L, layer=L, **kwargs)
                             .to(dtype=chat_model.dtype) for L in layers})


def direction_for(chat_model, seed=1):
    return torch.randn(chat_model.d_model, generator=torch.Generator().manual_seed(seed), dtype=chat_model.dtype)


# --- the slow reference: the whole SAE spliced in, gradients on dense feature tensors -----------

def full_last_logits(chat_model, batch, interventions=(), edits=()):
    handles = []
    with intervene(chat_model, *interventions), hooks_removed_on_exit(handles):
        handles += [add_output_edit(chat_model.layers[L], edit) for L, edit in edits]
        return chat_model.model(**model_inputs(batch), use_cache=False).logits[:, -1]


def reference_ig(chat_model, sae, layer, instructions, direction, steps):
    """Dense attributions ``[prompts, seq, d_sae]``, error shares ``[prompts, seq]``, the
    jailbreak tokens and the metric with only ``layer`` patched, by splicing the SAE at
    ``layer`` into full forward passes and differentiating its feature and error tensors."""
    batch = chat_model.tokenize(instructions)
    ablation = DirectionalAblation(direction)
    clean = residuals(chat_model, batch, [layer])[layer]
    patched = residuals(chat_model, batch, [layer], interventions=[ablation])[layer]
    refusal = chat_model.refusal_token_ids[0]
    with torch.no_grad():
        patched_logits = full_last_logits(chat_model, batch, [ablation])
        patched_logits[:, chat_model.refusal_token_ids] = float("-inf")
        jailbreak = patched_logits.argmax(-1)
        f_clean, f_patched = sae.encode(clean), sae.encode(patched)
        e_clean, e_patched = clean - sae.decode(f_clean), patched - sae.decode(f_patched)

    def metric(logits):
        return logits.gather(-1, jailbreak[:, None]).squeeze(-1) - logits[:, refusal]

    grad_f, grad_e = torch.zeros_like(f_clean), torch.zeros_like(e_clean)
    for alpha in interpolation_points(steps).tolist():
        f = (f_clean + alpha * (f_patched - f_clean)).requires_grad_(True)
        e = (e_clean + alpha * (e_patched - e_clean)).requires_grad_(True)
        logits = full_last_logits(chat_model, batch, edits=[(layer, lambda _h: sae.decode(f) + e)])
        df, de = torch.autograd.grad(metric(logits).sum(), [f, e])
        grad_f += df / steps
        grad_e += de / steps
    with torch.no_grad():
        at_layer = metric(full_last_logits(chat_model, batch, edits=[(layer, lambda _h: patched)]))
    return (f_patched - f_clean) * grad_f, ((e_patched - e_clean) * grad_e).sum(-1), jailbreak, at_layer


def dense(entries, n_prompts, width, d_sae):
    out = torch.zeros((n_prompts, width, d_sae), dtype=entries.attribution.dtype)
    out[entries.prompt, entries.position + width, entries.feature] = entries.attribution
    return out


# --- exactness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model, architecture, kwargs", [
    ("llama64", "jumprelu", {}), ("llama64", "topk", {}), ("llama64", "standard", {}),
    ("llama64", "topk", {"rescale_acts_by_decoder_norm": True}), ("gemma32", "jumprelu", {})])
def test_integrated_gradients_equal_the_dense_reference(request, model, architecture, kwargs):
    chat_model = request.getfixturevalue(model)
    saes = saes_for(chat_model, architecture, **kwargs)
    direction = direction_for(chat_model)
    result = attribute(chat_model, saes, PROMPTS, direction, steps=3, batch_size=4)
    width = int(result.lengths.max())
    tolerance = TIGHT if chat_model.dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-7}
    assert (result.jailbreak_token != result.refusal_token).all(), "a zero metric would test nothing"
    for layer in LAYERS:
        attributions, error, jailbreak, at_layer = reference_ig(chat_model, saes[layer], layer, PROMPTS,
                                                                direction, steps=3)
        got = result.layers[layer]
        assert len(got.feature) > 0 and attributions.abs().max() > 1e-6
        torch.testing.assert_close(dense(got, len(PROMPTS), width, saes[layer].cfg.d_sae), attributions, **tolerance)
        torch.testing.assert_close(got.error, error, **tolerance)
        assert torch.equal(result.jailbreak_token, jailbreak)
        torch.testing.assert_close(got.m_patched_at_layer, at_layer, **tolerance)


def test_completeness_gap_shrinks_as_steps_grow(llama64):
    assert interpolation_points(4).tolist() == [0.0, 0.25, 0.5, 0.75]  # left Riemann sum: α = 0 first
    saes = saes_for(llama64)
    direction = direction_for(llama64)
    gaps = {}
    for steps in (4, 32):
        result = attribute(llama64, saes, PROMPTS, direction, steps=steps, batch_size=4)
        for layer, entries in result.layers.items():
            change = entries.m_patched_at_layer - result.m_clean
            assert change.abs().min() > 1e-3, "patching the layer should move the metric"
            gaps[steps, layer] = (entries.total() - change).abs().max() / change.abs().max()
    for layer in LAYERS:
        assert gaps[32, layer] < 0.03
        assert gaps[32, layer] < gaps[4, layer] / 4  # a left Riemann sum: the gap falls like 1/steps


def test_one_step_is_attribution_patching(chat_model):
    """``steps=1`` (α = 0, one layer at a time from the cache) = ``method="atp"`` (every layer
    from one backward pass through the whole model), float32 models as they come."""
    saes = saes_for(chat_model)
    direction = direction_for(chat_model)
    one_step = attribute(chat_model, saes, PROMPTS, direction, steps=1, batch_size=3)
    patching = attribute(chat_model, saes, PROMPTS, direction, method="atp", batch_size=3)
    assert patching.method == "atp" and patching.steps == 1
    assert patching.layers[2].m_patched_at_layer.isnan().all()  # off by default for atp
    torch.testing.assert_close(patching.m_clean, one_step.m_clean, rtol=1e-5, atol=1e-6)
    for layer in LAYERS:
        a, b = one_step.layers[layer], patching.layers[layer]
        assert torch.equal(a.prompt, b.prompt) and torch.equal(a.position, b.position)
        assert torch.equal(a.feature, b.feature)
        torch.testing.assert_close(a.attribution, b.attribution, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.error, b.error, rtol=1e-4, atol=1e-6)


def test_a_prompt_alone_equals_the_prompt_in_a_padded_batch(llama64):
    saes = saes_for(llama64)
    direction = direction_for(llama64)
    together = attribute(llama64, saes, PROMPTS, direction, steps=2, batch_size=4)
    last = len(PROMPTS) - 1  # "Hi": the shortest, the most left padding
    alone = attribute(llama64, saes, PROMPTS[last:], direction, steps=2)
    assert together.lengths[last] < together.lengths.max()
    for layer in LAYERS:
        position, feature, attribution = together.layers[layer].of_prompt(last)
        single = alone.layers[layer]
        assert torch.equal(position, single.position) and torch.equal(feature, single.feature)
        torch.testing.assert_close(attribution, single.attribution, **TIGHT)
        width = single.error.shape[1]
        torch.testing.assert_close(together.layers[layer].error[last, -width:], single.error[0], **TIGHT)
        assert not together.layers[layer].error[last, :-width].any()
    one_by_one = attribute(llama64, saes, PROMPTS, direction, steps=2, batch_size=1)
    for layer in LAYERS:
        assert torch.equal(one_by_one.layers[layer].feature, together.layers[layer].feature)
        torch.testing.assert_close(one_by_one.layers[layer].attribution, together.layers[layer].attribution, **TIGHT)


@pytest.mark.parametrize("method", ["ig", "atp"])
def test_no_gradient_reaches_any_weight(llama64, method):
    saes = saes_for(llama64)
    params = [*llama64.model.parameters(), *(p for L in LAYERS for p in saes[L].parameters())]
    flags = [p.requires_grad for p in params]
    assert any(flags), "the model's weights require grad as loaded: the test must see them untouched"
    attribute(llama64, saes, PROMPTS[:2], direction_for(llama64), method=method, steps=2)
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == flags


def test_the_jailbreak_token_is_never_the_refusal_token(llama64):
    """Where the patched model's argmax is the refusal token itself, m would be 0 everywhere."""
    saes = saes_for(llama64, layers=[3])
    direction = direction_for(llama64)
    plain = attribute(llama64, saes, PROMPTS, direction, method="atp")
    argmax = int(plain.jailbreak_token[0])
    result = attribute(llama64, saes, PROMPTS, direction, method="atp", refusal_token=argmax)
    assert result.refusal_token == argmax
    assert (result.jailbreak_token != argmax).all() and (result.m_patched != 0).all()
    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0], [3.0, 2.0, 9.0, 1.0]])
    assert jailbreak_tokens(logits, [1, 2]).tolist() == [3, 0]


def test_contiguous_head_input_changes_no_number_and_leaves_no_hook(chat_model):
    batch = chat_model.tokenize(PROMPTS)
    head = chat_model.model.get_output_embeddings()
    seen = []
    plain = full_last_logits(chat_model, batch)
    with torch.no_grad(), contiguous_head_input(chat_model):
        probe = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))  # runs after ours
        try:
            fixed = chat_model.model(**model_inputs(batch), use_cache=False, logits_to_keep=1).logits[:, -1]
        finally:
            probe.remove()
    assert seen == [True]
    torch.testing.assert_close(fixed, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="boom"), contiguous_head_input(chat_model):
        raise RuntimeError("boom")
    assert not head._forward_pre_hooks


def test_decomposition_in_chunks_equals_one_chunk(llama64, monkeypatch):
    from refusal_lens.attribution import decomposition

    saes = saes_for(llama64)
    direction = direction_for(llama64)
    whole = attribute(llama64, saes, PROMPTS, direction, method="atp")
    monkeypatch.setattr(decomposition, "CHUNK_ELEMENTS_CPU", 96 * 7)  # 7 tokens a chunk
    chunked = attribute(llama64, saes, PROMPTS, direction, method="atp")
    for layer in LAYERS:
        a, b = whole.layers[layer], chunked.layers[layer]
        assert torch.equal(a.feature, b.feature) and torch.equal(a.position, b.position)
        torch.testing.assert_close(a.attribution, b.attribution, **TIGHT)
        torch.testing.assert_close(a.error, b.error, **TIGHT)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_input_normalising_saes_are_refused(llama64, norm):
    saes = saes_for(llama64, normalize_activations=norm)
    with pytest.raises(NotImplementedError, match="normalises its input"):
        attribute(llama64, saes, PROMPTS[:1], direction_for(llama64))


def test_bad_arguments_get_clear_errors(llama64):
    saes = saes_for(llama64)
    direction = direction_for(llama64)
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer ≥ 1"):
            attribute(llama64, saes, PROMPTS[:1], direction, steps=steps)
    with pytest.raises(ValueError, match="Unknown attribution method"):
        attribute(llama64, saes, PROMPTS[:1], direction, method="dense")
    with pytest.raises(KeyError, match=r"No SAE at layers \[1\]"):
        attribute(llama64, saes, PROMPTS[:1], direction, layers=[1, 2])
    scores = feature_scores(attribute(llama64, saes, PROMPTS[:2], direction, layers=[2], method="atp"))
    with pytest.raises(ValueError, match="k=4 is larger than the 3 cosine candidates"):
        cossim_ap_features(scores, [(2, 0), (2, 1), (3, 5)], k=4)
    with pytest.raises(ValueError, match="larger than the .* features that changed"):
        attribution_features(scores, k=len(scores.keys) + 1)
    with pytest.raises(ValueError, match="k=2 is larger than the 1 cosine candidates"):
        cosine_features([(2, 0, 0.5)], k=2)


# --- scores and feature sets ---------------------------------------------------------------------

def test_prefix_tokens_end_where_the_instruction_starts(chat_model):
    batch = chat_model.tokenize(["How do I"])
    ids = batch["input_ids"][0].tolist()
    text = chat_model.tokenizer.decode(ids[chat_model.n_pre_instruction_tokens:])
    assert text.startswith("How do I")
    assert "How" not in chat_model.tokenizer.decode(ids[:chat_model.n_pre_instruction_tokens])


def test_scores_average_attribution_over_the_instruction_and_after(llama64):
    saes = saes_for(llama64)
    result = attribute(llama64, saes, PROMPTS, direction_for(llama64), method="atp")
    scores = feature_scores(result)
    keep = result.lengths - llama64.n_pre_instruction_tokens
    assert (keep > 0).all() and (keep < result.lengths).all()
    for prompt in (0, 3):
        expected: dict = {}
        for layer, entries in result.layers.items():
            for position, feature, value in zip(*map(torch.Tensor.tolist, entries.of_prompt(prompt))):
                if -position <= keep[prompt]:
                    expected[layer, feature] = expected.get((layer, feature), 0.0) + value / float(keep[prompt])
        got = {key: float(v) for key, v in zip(scores.keys, scores.per_prompt[prompt]) if v != 0}
        assert got == pytest.approx({key: v for key, v in expected.items() if v != 0}, rel=1e-9, abs=1e-15)
    unskipped = feature_scores(result, skip_prefix=False)
    assert len(unskipped.keys) >= len(scores.keys)
    top = scores.top(5)
    assert [s.score for s in top] == sorted((s.score for s in top), reverse=True)
    assert top[0].score == pytest.approx(float(scores.mean().max()))
    assert scores.top(3, prompt=1)[0].score == pytest.approx(float(scores.per_prompt[1].max()))


def test_cossim_ap_is_attribution_over_the_candidates_only(llama64):
    saes = saes_for(llama64)
    scores = feature_scores(attribute(llama64, saes, PROMPTS, direction_for(llama64), method="atp"))
    best = attribution_features(scores, k=4)
    never_changed = next((3, i) for i in range(saes[3].cfg.d_sae) if (3, i) not in set(scores.keys))
    candidates = [(f.layer, f.feature, 0.9) for f in best[1:3]] + [(*never_changed, 0.8)]
    chosen = cossim_ap_features(scores, candidates, k=3)
    assert [(f.layer, f.feature) for f in chosen] == [(f.layer, f.feature) for f in best[1:3]] + [never_changed]
    assert chosen[-1].score == 0.0
    assert chosen[0].score == pytest.approx(best[1].score)
    per_prompt = cossim_ap_features(scores, candidates, k=1, prompt=2)
    column = scores.keys.index(per_prompt[0][:2])
    assert per_prompt[0].score == pytest.approx(float(scores.per_prompt[2, column]))


def test_cosine_alone_ranks_candidates_across_layers():
    candidates = [(0, 5, 0.2), (0, 9, 0.1), (2, 1, 0.7), (2, 3, 0.2), (3, 0, 0.5)]
    assert cosine_features(candidates, k=3) == [(2, 1, 0.7), (3, 0, 0.5), (0, 5, 0.2)]


def test_activation_difference_equals_a_dense_computation(llama64):
    saes = saes_for(llama64, layers=[1, 3])
    harmful, harmless = PROMPTS[:2], PROMPTS[2:]
    chosen = activation_difference_features(llama64, saes, harmful, harmless, k=5, batch_size=1)

    def mean_activation(instructions, layer):
        batch = llama64.tokenize(instructions)
        skip = llama64.n_pre_instruction_tokens
        with torch.no_grad():
            acts = saes[layer].encode(residuals(llama64, batch, [layer])[layer])
        per_prompt = [acts[i, -(int(n) - skip):].mean(0) for i, n in enumerate(batch["attention_mask"].sum(1))]
        return torch.stack(per_prompt).mean(0)

    difference = {L: mean_activation(harmful, L) - mean_activation(harmless, L) for L in (1, 3)}
    flat = torch.cat([difference[1], difference[3]])
    values, index = flat.topk(5)
    expected = [((1, int(i)) if i < 96 else (3, int(i) - 96), float(v)) for v, i in zip(values, index)]
    assert [(f.layer, f.feature) for f in chosen] == [key for key, _ in expected]
    assert [f.score for f in chosen] == pytest.approx([v for _, v in expected], rel=1e-4, abs=1e-6)
