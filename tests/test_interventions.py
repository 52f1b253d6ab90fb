"""Exactness of every intervention against its reference computation (METHOD.md §3)."""

import pytest
import torch
from conftest import PROMPTS, tiny_llama
from sae_factory import make_sae

from refusal_lens.activations import model_inputs, residuals
from refusal_lens.generation import generate
from refusal_lens.interventions import (ActivationAddition, DirectionalAblation, FeatureIntervention,
                                        FeatureOp, SpliceFeatureIntervention, intervene)
from refusal_lens.saes import SAESet

LAYERS = [0, 2, 3]


def sae_set_for(chat_model, architecture, **kwargs):
    return SAESet.from_saes({L: make_sae(architecture, chat_model.d_model, seed=L, layer=L, **kwargs)
                             for L in LAYERS})


def all_logits(chat_model, batch, interventions=()):
    with torch.no_grad(), intervene(chat_model, *interventions):
        return chat_model.model(**model_inputs(batch), use_cache=False).logits


def test_residual_hook_equals_hidden_states(chat_model):
    batch = chat_model.tokenize(PROMPTS)
    with torch.no_grad():
        hidden = chat_model.model(**model_inputs(batch), output_hidden_states=True).hidden_states
    got = residuals(chat_model, batch, layers=[0, 1, 2])
    for layer in (0, 1, 2):
        torch.testing.assert_close(got[layer], hidden[layer + 1])
    last = residuals(chat_model, batch, layers=[1], positions=[-1, -2])
    torch.testing.assert_close(last[1], hidden[2][:, [-1, -2]])


def features_for(chat_model, saes, batch, per_layer=6):
    """Features that are actually active on these prompts, at every SAE layer."""
    acts = residuals(chat_model, batch, layers=saes.layers)
    chosen = []
    for layer in saes.layers:
        fired = (saes[layer].encode(acts[layer]) > 0).flatten(0, 1).sum(0)
        chosen += [(layer, int(i)) for i in fired.argsort(descending=True)[:per_layer]]
    return chosen


@pytest.mark.parametrize("architecture", ["jumprelu", "topk", "standard"])
@pytest.mark.parametrize("op", [FeatureOp("zero"), FeatureOp("scale", -3.0), FeatureOp("set", 7.5)])
def test_sparse_closed_form_equals_full_splice(chat_model, architecture, op):
    saes = sae_set_for(chat_model, architecture)
    batch = chat_model.tokenize(PROMPTS)
    features = features_for(chat_model, saes, batch)
    sparse = all_logits(chat_model, batch, [FeatureIntervention(saes, features, op)])
    splice = all_logits(chat_model, batch, [SpliceFeatureIntervention(saes, features, op)])
    clean = all_logits(chat_model, batch)
    assert not torch.allclose(sparse, clean, atol=1e-4), "the edit should change the output"
    torch.testing.assert_close(sparse, splice, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["jumprelu", "topk", "standard"])
def test_per_feature_set_values_equal_full_splice(chat_model, architecture):
    """``FeatureOp.set_each``: each feature set to its own value, in the sparse closed form, the
    splice reference and generation alike; all values equal is the plain ``set``."""
    saes = sae_set_for(chat_model, architecture)
    batch = chat_model.tokenize(PROMPTS)
    features = features_for(chat_model, saes, batch)
    op = FeatureOp.set_each({key: 1.0 + 0.5 * j for j, key in enumerate(features)})
    sparse = all_logits(chat_model, batch, [FeatureIntervention(saes, features, op)])
    splice = all_logits(chat_model, batch, [SpliceFeatureIntervention(saes, features, op)])
    assert not torch.allclose(sparse, all_logits(chat_model, batch, [FeatureIntervention(saes, features,
                                                                                         FeatureOp("set", 2.0))]))
    torch.testing.assert_close(sparse, splice, rtol=1e-5, atol=1e-5)
    same = FeatureOp.set_each({key: 7.5 for key in features})
    torch.testing.assert_close(all_logits(chat_model, batch, [FeatureIntervention(saes, features, same)]),
                               all_logits(chat_model, batch, [FeatureIntervention(saes, features, FeatureOp("set", 7.5))]))
    assert (generate(chat_model, PROMPTS, max_new_tokens=4, interventions=[FeatureIntervention(saes, features, op)])
            == generate(chat_model, PROMPTS, max_new_tokens=4,
                        interventions=[SpliceFeatureIntervention(saes, features, op)]))


def test_per_feature_values_belong_to_set_only():
    with pytest.raises(ValueError, match="'set' operation"):
        FeatureOp("scale", -1.0, (((1, 2), 3.0),))
    op = FeatureOp.set_each({(1, 3): 2.5, (1, 1): 7.0, (2, 3): 9.0}, default=-4.0)
    assert op.layer_values(1, [1, 3, 5]) == [7.0, 2.5, -4.0] and op.layer_values(2, [3]) == [9.0]
    assert FeatureOp("set", 3.0).layer_values(1, [1, 2]) is None


def test_closed_form_with_normalized_saes():
    llama = tiny_llama()
    with torch.no_grad():  # sae_lens's constant_norm_rescale turns a zero residual into NaN
        llama.model.get_input_embeddings().weight[llama.tokenizer.pad_token_id].normal_()
    for norm in ("constant_norm_rescale", "layer_norm"):
        saes = sae_set_for(llama, "jumprelu", normalize_activations=norm)
        batch = llama.tokenize(PROMPTS)
        features = features_for(llama, saes, batch)
        sparse = all_logits(llama, batch, [FeatureIntervention(saes, features)])
        splice = all_logits(llama, batch, [SpliceFeatureIntervention(saes, features)])
        torch.testing.assert_close(sparse, splice, rtol=1e-5, atol=1e-5)


def test_topk_rescaled_by_decoder_norm(llama):
    saes = sae_set_for(llama, "topk", rescale_acts_by_decoder_norm=True)
    batch = llama.tokenize(PROMPTS)
    features = features_for(llama, saes, batch)
    sparse = all_logits(llama, batch, [FeatureIntervention(saes, features, FeatureOp("scale", -1.0))])
    splice = all_logits(llama, batch, [SpliceFeatureIntervention(saes, features, FeatureOp("scale", -1.0))])
    torch.testing.assert_close(sparse, splice, rtol=1e-5, atol=1e-5)


def test_scale_by_one_is_identity(chat_model):
    saes = sae_set_for(chat_model, "jumprelu")
    batch = chat_model.tokenize(PROMPTS)
    features = features_for(chat_model, saes, batch)
    torch.testing.assert_close(all_logits(chat_model, batch, [FeatureIntervention(saes, features, FeatureOp("scale", 1.0))]),
                               all_logits(chat_model, batch), rtol=1e-6, atol=1e-6)


def test_position_mask_matches_splice(llama):
    saes = sae_set_for(llama, "jumprelu")
    batch = llama.tokenize(PROMPTS)
    features = features_for(llama, saes, batch)
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, -3:] = True
    sparse = all_logits(llama, batch, [FeatureIntervention(saes, features, position_mask=mask)])
    splice = all_logits(llama, batch, [SpliceFeatureIntervention(saes, features, position_mask=mask)])
    torch.testing.assert_close(sparse, splice, rtol=1e-5, atol=1e-5)
    # positions before the mask are untouched
    clean = all_logits(llama, batch)
    torch.testing.assert_close(sparse[:, :-3], clean[:, :-3])


def test_per_row_feature_sets_equal_separate_runs(llama):
    saes = sae_set_for(llama, "jumprelu")
    prompt = PROMPTS[2]
    features = features_for(llama, saes, llama.tokenize([prompt]))
    sets = [features[:3], features[3:9], features, []]
    batch = llama.tokenize([prompt] * len(sets))
    together = all_logits(llama, batch, [FeatureIntervention.for_rows(saes, sets)])[:, -1]
    single = llama.tokenize([prompt])
    for row, feature_set in enumerate(sets):
        alone = all_logits(llama, single, [FeatureIntervention(saes, feature_set)] if feature_set else [])[:, -1]
        torch.testing.assert_close(together[row:row + 1], alone, rtol=1e-5, atol=1e-5)


def test_per_row_masks_over_a_universe(llama):
    saes = sae_set_for(llama, "jumprelu")
    universe = [(0, 1), (0, 4), (2, 2), (2, 7), (2, 9)]  # (2, 9) in no row
    sets = [[(2, 7), (0, 1)], [], [[0, 4], (2, 2)]]  # keys as tuples or lists, in any order
    edit = FeatureIntervention.for_rows(saes, sets, universe=universe)
    assert edit.features == {0: [1, 4], 2: [2, 7, 9]}  # the universe's columns, whatever the rows hold
    assert edit.row_masks[0].tolist() == [[True, False], [False, False], [False, True]]
    assert edit.row_masks[2].tolist() == [[False, True, False], [False, False, False], [True, False, False]]
    with pytest.raises(ValueError, match=r"outside the universe, e.g. \[\(2, 3\)\] \(row 1\)"):
        FeatureIntervention.for_rows(saes, [[(0, 1)], [(2, 3), (0, 4)]], universe=universe)


def test_directional_ablation_removes_projection_everywhere(chat_model):
    batch = chat_model.tokenize(PROMPTS)
    direction = torch.randn(chat_model.d_model)
    unit = direction / direction.norm()
    layers = list(range(chat_model.n_layers))
    clean = residuals(chat_model, batch, layers)
    ablated = residuals(chat_model, batch, layers, interventions=[DirectionalAblation(direction)])
    for layer in layers:
        assert (clean[layer] @ unit).abs().max() > 1e-2
        assert (ablated[layer] @ unit).abs().max() < 1e-4


def test_activation_addition_adds_vector_at_layer(llama):
    batch = llama.tokenize(PROMPTS)
    vector = torch.randn(llama.d_model)
    clean = residuals(llama, batch, [1])[1]
    added = residuals(llama, batch, [1], interventions=[ActivationAddition(vector, layer=1)])[1]
    torch.testing.assert_close(added - clean, vector.expand_as(clean), rtol=1e-5, atol=1e-5)


def test_hooks_removed_after_exception(chat_model):
    saes = sae_set_for(chat_model, "jumprelu")
    before = [len(block._forward_hooks) + len(block._forward_pre_hooks) for block in chat_model.layers]
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(chat_model, DirectionalAblation(torch.randn(chat_model.d_model)),
                       FeatureIntervention(saes, [(0, 1), (2, 3)])):
            assert sum(len(b._forward_hooks) for b in chat_model.layers) > sum(before)
            raise RuntimeError("boom")
    after = [len(block._forward_hooks) + len(block._forward_pre_hooks) for block in chat_model.layers]
    assert after == before


def test_feature_out_of_range_is_a_clear_error(llama):
    saes = sae_set_for(llama, "jumprelu")
    with pytest.raises(IndexError, match="out of range"):
        all_logits(llama, llama.tokenize(["Hi"]), [FeatureIntervention(saes, [(0, 10_000)])])
    with pytest.raises(KeyError, match="No SAE at layers"):
        FeatureIntervention(saes, [(1, 0)])


def test_feature_intervention_in_generation_matches_splice(llama):
    saes = sae_set_for(llama, "jumprelu")
    features = features_for(llama, saes, llama.tokenize(PROMPTS))
    op = FeatureOp("scale", -3.0)
    sparse = generate(llama, PROMPTS, max_new_tokens=6, interventions=[FeatureIntervention(saes, features, op)])
    splice = generate(llama, PROMPTS, max_new_tokens=6, interventions=[SpliceFeatureIntervention(saes, features, op)])
    assert sparse == splice


class SeqLengthsSeen(FeatureIntervention):
    """The sparse edit, recording the sequence length of every input it edits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def edit(self, layer, x):
        self.seen.append(x.shape[1])
        return super().edit(layer, x)


def test_generated_positions_follow_include_generated(llama):
    saes = sae_set_for(llama, "jumprelu")
    batch = llama.tokenize(PROMPTS[:1])
    features = features_for(llama, saes, batch)
    intervention = SeqLengthsSeen(saes, features, position_mask=torch.zeros_like(batch["attention_mask"], dtype=torch.bool),
                                  include_generated=False)
    with_prompt_mask_only = generate(llama, PROMPTS[:1], max_new_tokens=4, interventions=[intervention])
    clean = generate(llama, PROMPTS[:1], max_new_tokens=4)
    assert with_prompt_mask_only == clean and 1 in intervention.seen
