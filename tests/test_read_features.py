"""``read_features`` against a dense reference: the whole SAE's encode of ``residuals``."""

import pytest
import torch
from conftest import PROMPTS
from sae_factory import make_sae

from refusal_lens.activations import FeatureActivations, read_features, residuals
from refusal_lens.interventions import FeatureIntervention
from refusal_lens.pipeline.interactions import design_matrix
from refusal_lens.saes import SAESet

LAYERS = [0, 2, 3]
TEXTS = PROMPTS + ["Tell me a joke about cats.", "What is 2+2?"]
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module", params=["jumprelu", "topk", "standard"])
def saes(request, llama):
    return SAESet.from_saes({L: make_sae(request.param, llama.d_model, seed=L, layer=L) for L in LAYERS})


def dense(chat_model, saes, texts, positions=None, interventions=()):
    """``{layer: [prompts, positions, d_sae]}`` from the whole SAE, and the attention mask read."""
    batch = chat_model.tokenize(texts)
    res = residuals(chat_model, batch, saes.layers, positions, interventions)
    mask = batch["attention_mask"].bool()
    if positions is not None:
        mask = mask[:, torch.tensor(positions) % mask.shape[1]]
    return {L: saes[L].encode(res[L]).masked_fill(~mask[:, :, None], 0) for L in saes.layers}, mask


def some_features(reference):
    """Per layer, the two features firing most and one that never fires."""
    chosen = []
    for L, acts in reference.items():
        fired = (acts > 0).flatten(0, 1).sum(0)
        chosen += [(L, int(i)) for i in fired.argsort(descending=True)[:2]] + [(L, int(fired.argmin()))]
    return chosen


def test_chosen_features_at_positions(llama, saes):
    reference, mask = dense(llama, saes, TEXTS, positions=[-1, -3])
    chosen = some_features(reference)[::-1] + [some_features(reference)[0]]  # any order, repeats kept
    got = read_features(llama, saes, TEXTS, chosen, positions=[-1, -3])
    assert got.keys == chosen and got.values.shape == (len(TEXTS), 2, len(chosen))
    assert got.values.dtype == torch.float32 and torch.equal(got.mask, mask)
    for j, (L, i) in enumerate(chosen):
        torch.testing.assert_close(got.values[..., j], reference[L][..., i], **CLOSE)


def test_all_active_features_of_a_layer(llama, saes):
    reference, _ = dense(llama, saes, TEXTS, positions=[-1])
    got = read_features(llama, saes, TEXTS, all_active=[2, 0], positions=[-1])
    expected = [(L, int(i)) for L in (2, 0) for i in torch.nonzero((reference[L] > 0).flatten(0, 1).any(0)).flatten()]
    assert got.keys == expected and got.all_active == (2, 0)
    for j, (L, i) in enumerate(got.keys):
        torch.testing.assert_close(got.values[..., j], reference[L][..., i], **CLOSE)
    silent = next(i for i in range(saes[2].cfg.d_sae) if (2, i) not in got.keys)
    assert torch.equal(got.column((2, silent)), torch.zeros(len(TEXTS), 1))
    with pytest.raises(KeyError, match="not read"):
        got.column((3, 0))


def test_max_over_every_token(llama, saes):
    reference, _ = dense(llama, saes, TEXTS)
    chosen = some_features(reference)
    got = read_features(llama, saes, TEXTS, chosen, all_active=[3], reduce="max")
    assert got.values.shape == (len(TEXTS), len(got.keys)) and got.keys[:len(chosen)] == chosen
    for j, (L, i) in enumerate(got.keys):
        torch.testing.assert_close(got.values[:, j], reference[L][..., i].amax(1), **CLOSE)
    assert any(got.values[:, j].max() == 0 for j in range(len(chosen))), "a never-firing feature reads 0"


def test_every_token_unreduced_is_right_aligned_across_batches(llama, saes):
    got = read_features(llama, saes, TEXTS, [(2, 5)], batch_size=2)
    width = max(llama.tokenize([t])["input_ids"].shape[1] for t in TEXTS)
    assert got.values.shape == (len(TEXTS), width, 1) and got.mask.shape == (len(TEXTS), width)
    for row, text in enumerate(TEXTS):
        alone, mask = dense(llama, saes, [text])
        n = mask.shape[1]
        assert got.mask[row].sum() == n and got.mask[row, -n:].all()
        torch.testing.assert_close(got.values[row, -n:, 0], alone[2][0, :, 5], **CLOSE)
        assert not got.values[row, :-n].any()


def test_batch_size_does_not_change_what_is_read(llama, saes):
    chosen = some_features(dense(llama, saes, TEXTS)[0])
    reads = [read_features(llama, saes, TEXTS, chosen, all_active=[0], positions=[-1, -2], batch_size=size)
             for size in (None, 1, 2)]
    for other in reads[1:]:
        assert other.keys == reads[0].keys
        torch.testing.assert_close(other.values, reads[0].values, **CLOSE)
        assert torch.equal(other.mask, reads[0].mask)


def test_with_an_intervention_active(llama, saes):
    clean, _ = dense(llama, saes, TEXTS)
    ablate = FeatureIntervention(saes, some_features(clean)[:2])  # layer 0's two strongest
    edited, _ = dense(llama, saes, TEXTS, interventions=[ablate])
    chosen = some_features(clean)
    got = read_features(llama, saes, TEXTS, chosen, reduce="max", interventions=[ablate])
    for j, (L, i) in enumerate(chosen):
        # at layer 0 the SAE sees the stream before its own edit; above it, the edited stream
        expected = (clean if L == 0 else edited)[L][..., i].amax(1)
        torch.testing.assert_close(got.values[:, j], expected, **CLOSE)
    assert not torch.allclose(edited[3], clean[3]), "the ablation should change the layers above it"


def test_forward_pass_stops_after_the_highest_layer(llama, saes):
    calls = []
    handle = llama.layers[3].register_forward_hook(lambda *_: calls.append(1))
    try:
        read_features(llama, saes, TEXTS, [(0, 1)], all_active=[2])
    finally:
        handle.remove()
    assert calls == []


def test_clear_errors(llama, saes):
    with pytest.raises(KeyError, match="No SAE at layers \\[1\\]"):
        read_features(llama, saes, TEXTS, [(1, 0)])
    with pytest.raises(ValueError, match="No features to read"):
        read_features(llama, saes, TEXTS)
    with pytest.raises(ValueError, match="Unknown reduction"):
        read_features(llama, saes, TEXTS, [(0, 1)], reduce="mean")


def test_design_matrix_takes_the_active_features_and_every_minimal_one():
    values = torch.tensor([[0.0, 2.0, 1.0], [0.0, 4.0, 0.0], [3.0, 0.0, 0.0]])
    acts = FeatureActivations([(0, 1), (0, 7), (2, 4)], values[:, None, :], torch.ones(3, 1, dtype=torch.bool), (0, 2))
    x, keys = design_matrix(acts, minimal=[(2, 4), (2, 9)], max_features=2)
    assert keys[:2] == [(2, 4), (0, 7)] and keys[2] == (2, 9)   # minimal first, then by frequency
    torch.testing.assert_close(x, torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
