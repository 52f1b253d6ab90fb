"""Edits that touch less: position scopes and conditional feature edits, each against a reference
computation (the full splice with the positions or the gate spelled out by hand)."""

import pytest
import torch
from conftest import PROMPTS, our_hooks
from sae_factory import make_sae
from test_interventions import all_logits, features_for

from refusal_lens.generation import generate
from refusal_lens.interventions import (
    FeatureIntervention,
    FeatureOp,
    ProjectionGatedFeatureIntervention,
    ScopedFeatureIntervention,
    SpliceFeatureIntervention,
    ThresholdFeatureIntervention,
    intervene,
)
from refusal_lens.interventions.positions import cached_length, check_scope, scope_columns
from refusal_lens.prefix_cache import build_prefix_cache, last_logits_from_cache
from refusal_lens.saes import SAESet
from refusal_lens.targeting import feature_thresholds, next_token_kl, projection_thresholds

LAYERS = [0, 2, 3]
OP = FeatureOp("scale", -3.0)  # moves the output more than zeroing, so a wrong mask shows


@pytest.fixture(scope="module")
def setup(llama):
    saes = SAESet.from_saes({L: make_sae("jumprelu", llama.d_model, seed=L, layer=L) for L in LAYERS})
    batch = llama.tokenize(PROMPTS)
    return saes, batch, features_for(llama, saes, batch)


def explicit_mask(batch, columns: slice) -> torch.Tensor:
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, columns] = True
    return mask


# --- position scopes ------------------------------------------------------------------------
def test_scope_columns():
    assert scope_columns("all", 10, 0, 3) == slice(0, 10)
    assert scope_columns("prompt", 10, 0, 3) == slice(0, 10)
    assert scope_columns("post_instruction", 10, 0, 3) == slice(7, 10)
    assert scope_columns("generated", 10, 0, 3) is None
    assert scope_columns("generated", 1, 10, 3) == slice(0, 1)
    assert scope_columns("prompt", 1, 10, 3) is None
    assert scope_columns("post_instruction", 1, 10, 3) is None
    with pytest.raises(ValueError, match="Unknown position scope"):
        check_scope("everywhere")


def test_cached_length_from_the_mask_or_the_cache():
    ids = torch.zeros(2, 1, dtype=torch.long)
    assert cached_length((), {"input_ids": ids, "attention_mask": torch.ones(2, 9)}) == 8
    assert cached_length((ids,), {"attention_mask": torch.ones(2, 1)}) == 0

    class Cache:
        def get_seq_length(self):
            return 5

    assert cached_length((), {"input_ids": ids, "cache": Cache()}) == 5


@pytest.mark.parametrize("scope", ["all", "prompt"])
def test_prompt_scopes_equal_the_plain_edit_on_a_prompt(llama, setup, scope):
    saes, batch, features = setup
    torch.testing.assert_close(all_logits(llama, batch, [ScopedFeatureIntervention(saes, features, OP, scope=scope)]),
                               all_logits(llama, batch, [FeatureIntervention(saes, features, OP)]))


def test_post_instruction_scope_equals_splice_on_the_last_template_tokens(llama, setup):
    saes, batch, features = setup
    k = llama.n_post_instruction_tokens
    assert 0 < k < batch["input_ids"].shape[1]
    scoped = all_logits(llama, batch, [ScopedFeatureIntervention(saes, features, OP, scope="post_instruction")])
    reference = all_logits(llama, batch, [SpliceFeatureIntervention(saes, features, OP, position_mask=explicit_mask(
        batch, slice(-k, None)))])
    torch.testing.assert_close(scoped, reference, rtol=1e-5, atol=1e-5)
    clean = all_logits(llama, batch)
    torch.testing.assert_close(scoped[:, :-k], clean[:, :-k])
    assert not torch.allclose(scoped[:, -k:], clean[:, -k:], atol=1e-4)


def test_generated_scope_leaves_the_prompt_pass_alone(llama, setup):
    saes, batch, features = setup
    torch.testing.assert_close(all_logits(llama, batch, [ScopedFeatureIntervention(saes, features, OP,
                                                                                   scope="generated")]),
                               all_logits(llama, batch))


class EditsSeen(ScopedFeatureIntervention):
    """The scoped edit, recording the width of every input it really edits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.edited: list[int] = []

    def edit(self, layer, x):
        if self._columns is not None:
            self.edited.append(x.shape[1])
        return super().edit(layer, x)


@pytest.mark.parametrize("scope, mask_columns, include_generated", [
    ("prompt", slice(None), False), ("post_instruction", "post", False), ("generated", slice(0, 0), True),
])
def test_scopes_in_generation_equal_splice_with_the_mask_by_hand(llama, setup, scope, mask_columns,
                                                                 include_generated):
    saes, _, features = setup
    prompts = PROMPTS[:3]
    batch = llama.tokenize(prompts, max_new_tokens=6)
    columns = slice(-llama.n_post_instruction_tokens, None) if mask_columns == "post" else mask_columns
    reference = SpliceFeatureIntervention(saes, features, OP, position_mask=explicit_mask(batch, columns),
                                          include_generated=include_generated)
    scoped = EditsSeen(saes, features, OP, scope=scope)
    got = generate(llama, prompts, max_new_tokens=6, interventions=[scoped])
    assert got == generate(llama, prompts, max_new_tokens=6, interventions=[reference])
    prompt_width = batch["input_ids"].shape[1]
    assert scoped.edited, "the scope edited nothing"
    if scope == "generated":
        assert set(scoped.edited) == {1}
    else:
        assert set(scoped.edited) == {prompt_width}


def test_scoped_rows_from_a_prefix_cache_equal_full_forwards(llama, setup):
    """The search evaluates scoped sets from a prefix cache, one set a row."""
    saes, _, features = setup
    sets = [features[:4], features[4:], features]
    cache = build_prefix_cache(llama, PROMPTS, start=min(LAYERS))
    rows = torch.tensor([1, 2, 3])
    together = last_logits_from_cache(llama, cache, rows, [ScopedFeatureIntervention.for_rows(
        saes, sets, OP, scope="post_instruction")])
    for j, (row, feature_set) in enumerate(zip(rows.tolist(), sets)):
        alone = all_logits(llama, llama.tokenize(PROMPTS), [ScopedFeatureIntervention(
            saes, feature_set, OP, scope="post_instruction")])[row, -1]
        torch.testing.assert_close(together[j], alone, rtol=1e-5, atol=1e-5)


def test_scope_hooks_removed_after_an_exception(llama, setup):
    saes, _, features = setup
    model_hooks = len(llama.model._forward_pre_hooks)
    hooks_before = our_hooks(llama)
    with pytest.raises(RuntimeError, match="boom"), intervene(
            llama, ScopedFeatureIntervention(saes, features, scope="post_instruction")):
        assert len(llama.model._forward_pre_hooks) == model_hooks + 1
        raise RuntimeError("boom")
    assert len(llama.model._forward_pre_hooks) == model_hooks
    assert our_hooks(llama) == hooks_before


# --- conditional edits ----------------------------------------------------------------------
class SpliceThreshold(SpliceFeatureIntervention):
    """Reference: encode with the whole SAE, edit feature i only where its activation > t_i."""

    def __init__(self, saes, features, op, thresholds):
        super().__init__(saes, features, op)
        self.thresholds = thresholds

    def edit(self, layer, x):
        sae = self.saes[layer]
        acts = sae.encode(x)
        idx = torch.tensor(self.features[layer])
        chosen = acts[..., idx]
        limits = torch.tensor([self.thresholds[(layer, i)] for i in self.features[layer]])
        edited = acts.clone()
        edited[..., idx] = torch.where(chosen > limits, self.op.apply(chosen), chosen)
        return sae.decode(edited) + (x - sae.decode(acts))


class SpliceProjectionGate(SpliceFeatureIntervention):
    """Reference: the full splice at the tokens where x · r̂ > θ_L, nothing elsewhere."""

    def __init__(self, saes, features, op, direction, thresholds):
        super().__init__(saes, features, op)
        self.unit, self.thresholds = direction / direction.norm(), thresholds

    def edit(self, layer, x):
        high = (x @ self.unit > self.thresholds[layer]).unsqueeze(-1)
        return torch.where(high, super().edit(layer, x), x)


def robust_thresholds(llama, saes, batch, features):
    """Per feature, the midpoint of the widest gap among its activations (no token near the threshold)."""
    from refusal_lens.activations import residuals
    acts = residuals(llama, batch, LAYERS)
    thresholds = {}
    for layer, i in features:
        values = saes[layer].encode(acts[layer])[..., i][batch["attention_mask"].bool()].sort().values
        gaps = values[1:] - values[:-1]
        j = int(gaps[len(values) // 3:].argmax()) + len(values) // 3  # keep the upper third or more edited
        thresholds[(layer, i)] = float((values[j] + values[j + 1]) / 2)
    return thresholds


def test_threshold_edit_equals_the_gated_splice(llama, setup):
    saes, batch, features = setup
    thresholds = robust_thresholds(llama, saes, batch, features)
    gated = all_logits(llama, batch, [ThresholdFeatureIntervention(saes, features, OP, thresholds=thresholds)])
    reference = all_logits(llama, batch, [SpliceThreshold(saes, features, OP, thresholds)])
    torch.testing.assert_close(gated, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gated, all_logits(llama, batch, [FeatureIntervention(saes, features, OP)]), atol=1e-4)
    assert not torch.allclose(gated, all_logits(llama, batch), atol=1e-4)


def test_threshold_limits(llama, setup):
    saes, batch, features = setup
    everywhere = all_logits(llama, batch, [ThresholdFeatureIntervention(saes, features, OP, thresholds=-1.0)])
    torch.testing.assert_close(everywhere, all_logits(llama, batch, [FeatureIntervention(saes, features, OP)]))
    nowhere = all_logits(llama, batch, [ThresholdFeatureIntervention(saes, features, OP, thresholds=1e9)])
    torch.testing.assert_close(nowhere, all_logits(llama, batch))
    with pytest.raises(ValueError, match="No threshold for features"):
        ThresholdFeatureIntervention(saes, features, OP, thresholds={features[0]: 1.0})


def test_thresholds_at_the_harmless_max_leave_those_prompts_alone(llama, setup):
    """Thresholds at quantile 1 of some prompts' activations never fire on those prompts."""
    saes, batch, features = setup
    thresholds = feature_thresholds(llama, saes, features, PROMPTS, quantile=1.0)
    edit = ThresholdFeatureIntervention(saes, features, OP, thresholds=thresholds)
    torch.testing.assert_close(all_logits(llama, batch, [edit]), all_logits(llama, batch))
    lower = feature_thresholds(llama, saes, features, PROMPTS, quantile=0.5)
    assert all(lower[k] <= thresholds[k] for k in features)
    assert not torch.allclose(all_logits(llama, batch, [ThresholdFeatureIntervention(
        saes, features, OP, thresholds=lower)]), all_logits(llama, batch), atol=1e-4)


def test_projection_gate_equals_the_gated_splice(llama, setup):
    saes, batch, features = setup
    direction = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    thresholds = projection_thresholds(llama, direction, LAYERS, PROMPTS, quantile=0.6)
    thresholds = {L: t + 1e-3 for L, t in thresholds.items()}  # no token exactly on it
    gated = all_logits(llama, batch, [ProjectionGatedFeatureIntervention(
        saes, features, OP, direction=direction, thresholds=thresholds)])
    reference = all_logits(llama, batch, [SpliceProjectionGate(saes, features, OP, direction, thresholds)])
    torch.testing.assert_close(gated, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gated, all_logits(llama, batch, [FeatureIntervention(saes, features, OP)]), atol=1e-4)
    assert not torch.allclose(gated, all_logits(llama, batch), atol=1e-4)


def test_projection_gate_limits_and_the_harmless_max(llama, setup):
    saes, batch, features = setup
    direction = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(2))
    low = ProjectionGatedFeatureIntervention(saes, features, OP, direction=direction, thresholds=-1e9)
    torch.testing.assert_close(all_logits(llama, batch, [low]),
                               all_logits(llama, batch, [FeatureIntervention(saes, features, OP)]))
    at_max = projection_thresholds(llama, direction, LAYERS, PROMPTS, quantile=1.0)
    high = ProjectionGatedFeatureIntervention(saes, features, OP, direction=direction, thresholds=at_max)
    torch.testing.assert_close(all_logits(llama, batch, [high]), all_logits(llama, batch))
    with pytest.raises(ValueError, match="No projection threshold"):
        ProjectionGatedFeatureIntervention(saes, features, OP, direction=direction, thresholds={0: 1.0})


def test_a_condition_and_a_scope_combine(llama, setup):
    saes, batch, features = setup
    thresholds = robust_thresholds(llama, saes, batch, features)
    k = llama.n_post_instruction_tokens
    both = all_logits(llama, batch, [ThresholdFeatureIntervention(saes, features, OP, thresholds=thresholds,
                                                                  scope="post_instruction")])
    gated = all_logits(llama, batch, [ThresholdFeatureIntervention(saes, features, OP, thresholds=thresholds)])
    clean = all_logits(llama, batch)
    torch.testing.assert_close(both[:, :-k], clean[:, :-k])
    # at the last positions the scope is the identity: the gated edit there sees the edited
    # lower positions in the unscoped run only, so compare with a reference of both masks
    reference = SpliceThreshold(saes, features, OP, thresholds)
    reference.position_mask = explicit_mask(batch, slice(-k, None))
    mask_by_hand = all_logits(llama, batch, [_ScopedSplice(reference)])
    torch.testing.assert_close(both, mask_by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both, gated, atol=1e-4)


class _ScopedSplice:
    """A reference splice whose edit is kept only where its position mask is set."""

    def __init__(self, splice):
        self.splice = splice

    def attach(self, chat_model):
        from refusal_lens.hooks import add_output_edit
        mask = self.splice.position_mask

        def edit(layer):
            return lambda x: torch.where(mask[:, :, None], self.splice.edit(layer, x), x)

        return [add_output_edit(chat_model.layers[L], edit(L)) for L in self.splice.features]

    def describe(self):
        return {}


def test_next_token_kl():
    logits = torch.randn(3, 11)
    assert torch.allclose(next_token_kl(logits, logits), torch.zeros(3), atol=1e-6)
    other = torch.randn(3, 11)
    p, q = logits.softmax(-1), other.softmax(-1)
    torch.testing.assert_close(next_token_kl(logits, other), (p * (p / q).log()).sum(-1))
