"""Pinning features to their clean value (interventions/pin.py) equals a two-pass reference: a clean
pass caches the full SAE's activations, an edited pass splices them back in (METHOD.md §5)."""

import pytest
import torch
from conftest import PROMPTS, tiny_llama
from sae_factory import make_sae
from transformers import BatchEncoding

from refusal_lens.activations import model_inputs, residuals
from refusal_lens.analyses.pinned import pinned_generate, pinned_last_logits, pinned_refusal_scores
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.interventions import FeatureOp, PinnedFeatures, SpliceFeatureIntervention, intervene, twin_batch
from refusal_lens.saes import SAESet
from refusal_lens.scoring import last_position_logits

LAYERS = [0, 1, 2]
OP = FeatureOp("scale", -3.0)
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


@pytest.fixture(scope="module")
def llama64():
    chat = tiny_llama(seed=2)
    chat.model.double()
    return chat


@pytest.fixture(scope="module", params=["jumprelu", "topk", "standard"])
def saes(request, llama64):
    return SAESet.from_saes({L: make_sae(request.param, llama64.d_model, seed=L, layer=L).to(dtype=torch.float64) for L in LAYERS})


def active_features(chat, saes, instructions, per_layer):
    """The most often active features of every layer on these prompts (clean run)."""
    acts = residuals(chat, chat.tokenize(instructions), LAYERS)
    chosen = {}
    for L in LAYERS:
        counts = (saes[L].encode(acts[L]) > 0).flatten(0, 1).sum(0)
        chosen[L] = [(L, int(i)) for i in counts.argsort(descending=True)[:per_layer]]
    return chosen


def edit_and_pin(chat, saes, instructions):
    """Edit layer 0 and half of layer 1's features; pin the other half of layer 1 and layer 2's."""
    chosen = active_features(chat, saes, instructions, per_layer=6)
    edit = chosen[0] + chosen[1][:3]
    pin = chosen[1][3:] + chosen[2]
    return edit, pin


def reference_logits(chat, saes, batch, edit, pin):
    """Two passes: the clean one caches every SAE activation at the pinned layers; the edited one
    splices the edit, then at each pinned layer encodes with the whole SAE, puts the pinned
    features back to their cached values, decodes and adds the error term."""
    layers = sorted({L for L, _ in pin})
    clean = {L: saes[L].encode(x) for L, x in residuals(chat, batch, layers).items()}

    def splice_pin(layer):
        index = torch.tensor([i for L, i in pin if L == layer])

        def edit_fn(x):
            acts = saes[layer].encode(x)
            error = x - saes[layer].decode(acts)
            acts[..., index] = clean[layer][..., index]
            return saes[layer].decode(acts) + error
        return edit_fn

    handles = []
    with torch.no_grad(), intervene(chat, SpliceFeatureIntervention(saes, edit, OP)), hooks_removed_on_exit(handles):
        handles += [add_output_edit(chat.layers[L], splice_pin(L)) for L in layers]
        return chat.model(**model_inputs(batch), use_cache=False).logits[:, -1]


def test_pinned_features_equal_the_two_pass_reference(llama64, saes):
    edit, pin = edit_and_pin(llama64, saes, PROMPTS)
    got = pinned_last_logits(llama64, saes, PROMPTS, edit, OP, pin)
    reference = reference_logits(llama64, saes, llama64.tokenize(PROMPTS), edit, pin)
    edited_only = pinned_last_logits(llama64, saes, PROMPTS, edit, OP)
    clean = last_position_logits(llama64, PROMPTS)
    assert not torch.allclose(got, edited_only, atol=1e-6), "pinning should change the edited run"
    assert not torch.allclose(got, clean, atol=1e-6), "the edit should survive the pin"
    torch.testing.assert_close(got, reference, **TIGHT)


def test_a_pin_without_an_edit_changes_nothing(llama64, saes):
    _, pin = edit_and_pin(llama64, saes, PROMPTS)
    torch.testing.assert_close(pinned_last_logits(llama64, saes, PROMPTS, [], OP, pin),
                               last_position_logits(llama64, PROMPTS), **TIGHT)


def capture(store, name):
    def hook(x):
        store.setdefault(name, x.clone())
    return hook


def test_pinning_a_whole_dictionary_swaps_in_the_clean_reconstruction(llama64, saes):
    """With every feature of layer 1 pinned, the edited rows leave layer 1 as the clean twin's
    reconstruction plus their own error term: x_e <- x_hat(x_c) + (x_e - x_hat(x_e))."""
    edit = active_features(llama64, saes, PROMPTS, per_layer=6)[0]
    n, sae = len(PROMPTS), saes[1]
    twin = twin_batch(llama64.tokenize(PROMPTS))
    interventions = [SpliceFeatureIntervention.for_rows(saes, [edit] * n + [[]] * n, OP),
                     PinnedFeatures(saes, [(1, i) for i in range(sae.cfg.d_sae)], n)]
    captured, handles = {}, []
    with torch.no_grad(), hooks_removed_on_exit(handles):
        handles.append(add_output_edit(llama64.layers[1], capture(captured, "before")))
        with intervene(llama64, *interventions):
            handles.append(add_output_edit(llama64.layers[1], capture(captured, "after")))
            llama64.model(**model_inputs(twin), use_cache=False)
        before, after = captured["before"], captured["after"]
        expected = sae.decode(sae.encode(before[n:])) + before[:n] - sae.decode(sae.encode(before[:n]))
    assert (before[:n] - before[n:]).abs().max() > 1e-6, "the edit at layer 0 should reach layer 1"
    torch.testing.assert_close(after[:n], expected, **TIGHT)
    torch.testing.assert_close(after[n:], before[n:], rtol=0, atol=0)


def test_pinned_generation_equals_a_step_by_step_reference(llama64, saes):
    """Greedy generation on twin rows equals, token by token, the two-pass reference run on the
    whole sequence at every step (no cache): the clean pass on the same tokens, then the edit."""
    edit, pin = edit_and_pin(llama64, saes, PROMPTS)
    got = pinned_generate(llama64, saes, PROMPTS, edit, OP, pin, max_new_tokens=5, batch_size=4)
    for prompt, answer in zip(PROMPTS, got):
        ids = llama64.tokenize([prompt])["input_ids"][0].tolist()
        new = []
        for _ in range(5):
            tokens = BatchEncoding({"input_ids": torch.tensor([ids + new]),
                                    "attention_mask": torch.ones(1, len(ids) + len(new), dtype=torch.long)})
            token = int(reference_logits(llama64, saes, tokens, edit, pin)[0].argmax())
            if token in llama64.stop_token_ids:
                break
            new.append(token)
        assert answer == llama64.tokenizer.decode(new, skip_special_tokens=True)


def test_pinned_scores_are_batch_invariant(llama64, saes):
    edit, pin = edit_and_pin(llama64, saes, PROMPTS)
    together = pinned_refusal_scores(llama64, saes, PROMPTS, edit, OP, pin, batch_size=4)
    alone = pinned_refusal_scores(llama64, saes, PROMPTS, edit, OP, pin, batch_size=1)
    torch.testing.assert_close(together, alone, rtol=1e-7, atol=1e-8)


def test_a_pin_outside_a_twin_batch_is_a_clear_error_and_its_hooks_go(llama64, saes):
    _, pin = edit_and_pin(llama64, saes, PROMPTS)
    batch = llama64.tokenize(PROMPTS)
    with pytest.raises(ValueError, match="twin batch"), intervene(llama64, PinnedFeatures(saes, pin, len(PROMPTS))):
        llama64.model(**model_inputs(batch), use_cache=False)
    assert all(not block._forward_hooks for block in llama64.layers)
    with pytest.raises(ValueError, match="No features"):
        PinnedFeatures(saes, [], 2)
    with pytest.raises(KeyError, match="No SAE at layers"):
        PinnedFeatures(saes, [(3, 0)], 2)
