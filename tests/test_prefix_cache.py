"""Running only the upper layers from a cached residual equals the full forward."""

import pytest
import torch
from conftest import PROMPTS
from sae_factory import make_sae

from refusal_lens.interventions import FeatureIntervention
from refusal_lens.prefix_cache import build_prefix_cache, last_logits_from_cache
from refusal_lens.saes import SAESet
from refusal_lens.scoring import last_position_logits


@pytest.mark.parametrize("start", [0, 1, 2])
def test_upper_layers_from_cache_equal_full_forward(chat_model, start):
    saes = SAESet.from_saes({L: make_sae("jumprelu", chat_model.d_model, seed=L, layer=L) for L in (2, 3)})
    features = [(2, 1), (2, 4), (3, 7), (3, 9), (3, 11)]
    cache = build_prefix_cache(chat_model, PROMPTS, start=start)
    rows = torch.tensor([0, 2, 2, 3, 1])
    intervention = FeatureIntervention(saes, features)
    fast = last_logits_from_cache(chat_model, cache, rows, [intervention])
    full = last_position_logits(chat_model, [PROMPTS[i] for i in rows], [intervention])
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-4)
    # the model is whole again afterwards
    assert len(chat_model.model.model.layers) == chat_model.n_layers


def test_cache_above_an_edited_layer_is_refused(llama):
    saes = SAESet.from_saes({2: make_sae("jumprelu", llama.d_model, layer=2)})
    cache = build_prefix_cache(llama, PROMPTS, start=3)
    with pytest.raises(ValueError, match="below the cached layer 3"):
        last_logits_from_cache(llama, cache, torch.tensor([0]), [FeatureIntervention(saes, [(2, 1)])])


def test_caches_at_several_layers_from_one_pass_equal_one_cache_each(chat_model):
    from refusal_lens.prefix_cache import build_prefix_caches

    caches = build_prefix_caches(chat_model, PROMPTS, [3, 1, 2])
    for start, cache in caches.items():
        single = build_prefix_cache(chat_model, PROMPTS, start=start)
        assert cache.start == start
        torch.testing.assert_close(cache.hidden, single.hidden, rtol=0, atol=0)
        assert torch.equal(cache.attention_mask, single.attention_mask)


@pytest.mark.parametrize("layer", [0, 2])
def test_direction_scores_from_cache_equal_full_forwards(chat_model, layer):
    """The direction stage's induce score (activation addition at the candidate's layer) read
    from the harmless residual cached at that layer = the full forward's."""
    from refusal_lens.interventions import ActivationAddition
    from refusal_lens.pipeline.direction import CandidateScorer
    from refusal_lens.scoring import refusal_score_from_logits

    direction = torch.randn(chat_model.d_model, generator=torch.Generator().manual_seed(layer)) * 4
    harmful, harmless = PROMPTS[:2], PROMPTS[2:]
    scorer = CandidateScorer(chat_model, harmful, harmless, [layer], rows_per_forward=3)
    fast = scorer.induce(direction[None], layer)[0].item()
    full_logits = last_position_logits(chat_model, harmless, [ActivationAddition(direction, layer)])
    full = refusal_score_from_logits(full_logits, chat_model.refusal_token_ids).mean().item()
    assert fast == pytest.approx(full, rel=1e-4, abs=1e-4)
    clean = refusal_score_from_logits(last_position_logits(chat_model, harmless), chat_model.refusal_token_ids)
    assert fast != pytest.approx(clean.mean().item(), abs=1e-3)  # the addition did something
