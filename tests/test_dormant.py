"""The dormant-feature analysis finds a planted dormant feature, sees it wake up, and tells whether
the jailbreak needs it (METHOD.md §4)."""

import pytest
import torch
from conftest import PROMPTS, tiny_llama
from sae_factory import make_sae

from refusal_lens.pipeline.dormant import analyse_dormant
from refusal_lens.saes import SAESet

ACTIVE = (1, 3)    # fires everywhere; writes along r (a decoder row of active_writes * r)
DORMANT = (2, 5)   # reads +r, biased to stay off unless ACTIVE's ablation adds PUSH * r to the stream
ALWAYS = (2, 0)    # fires everywhere, writes nothing
CAKE = (1, 6)      # fires on the token " cake" only (PROMPTS[0] has it, PROMPTS[1] not), writes nothing
MINIMAL = [list(ACTIVE), list(DORMANT), list(ALWAYS)]
PUSH = 10.0        # the residual stream of the tiny model has a norm of about 0.2
REFUSAL_GAIN = 2.0  # the refusal token's logit rises by this times the normalized stream's r component (~8)


def unit_direction(d_model: int) -> torch.Tensor:
    r = torch.randn(d_model, generator=torch.Generator().manual_seed(7))
    return r / r.norm()


def cake_embedding(chat) -> torch.Tensor:
    (token,) = chat.tokenizer(" cake", add_special_tokens=False)["input_ids"]
    return chat.model.model.embed_tokens.weight[token]


@pytest.fixture(scope="module")
def model():
    """A tiny Llama of its own (weights edited): refuses when the stream points along r, and the
    embedding of " cake" is ten times longer, so that a feature reading it stands out."""
    chat = tiny_llama(seed=1)
    with torch.no_grad():
        chat.model.lm_head.weight[chat.refusal_token_ids[0]] += REFUSAL_GAIN * unit_direction(chat.d_model)
        cake_embedding(chat).mul_(10)
    return chat


def planted_saes(chat, active_writes: float, dormant_writes: float) -> SAESet:
    """SAEs at layers 1 and 2 whose minimal-set features are set by hand (the others stay random).

    Zero-ablating ACTIVE at layer 1 adds ``-active_writes * r`` to the stream; DORMANT at layer 2
    reads r with a bias of -PUSH/2, so it wakes up (to about PUSH/2) when ``active_writes`` is
    -PUSH and stays off when it is +PUSH. Ablating the woken DORMANT adds ``-PUSH/2 * dormant_writes * r``.
    CAKE reads the embedding of " cake" with a bias of half its length.
    """
    d_model = chat.d_model
    r = unit_direction(d_model)
    cake = cake_embedding(chat).detach()
    saes = {L: make_sae("jumprelu", d_model, d_sae=8, layer=L, seed=L) for L in (1, 2)}
    with torch.no_grad():
        for sae in saes.values():
            sae.b_dec.zero_()
        for (layer, i), reads, bias, writes in [(ACTIVE, 0 * r, 1.0, active_writes * r),
                                                (DORMANT, r, -PUSH / 2, dormant_writes * r),
                                                (ALWAYS, 0 * r, 1.0, 0 * r),
                                                (CAKE, cake / cake.norm(), -cake.norm() / 2, 0 * r)]:
            sae = saes[layer]
            sae.W_enc[:, i], sae.b_enc[i], sae.threshold[i], sae.W_dec[i] = reads, bias, 0.0, writes
    return SAESet.from_saes(saes)


def test_a_dormant_feature_that_wakes_up_and_that_the_jailbreak_needs(model):
    # ablating ACTIVE (and ALWAYS) pushes the stream along r: the model refuses, and DORMANT wakes up;
    # ablating the woken DORMANT too pushes the stream back past zero, to -PUSH * r: no refusal.
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, MINIMAL, PROMPTS[:2], ["p0", "p1"])
    assert result["n_features"] == 3
    assert result["dormant_on_every_prompt"] == [list(DORMANT)]
    assert result["mean_dormant_per_prompt"] == 1.0
    for record in result["per_prompt"].values():
        assert record["dormant"] == [list(DORMANT)] and (record["n_dormant"], record["n_active"]) == (1, 2)
        assert record["woke_up"] == [list(DORMANT)]
        assert record["score_full_set"] < -5 and record["score_without_dormant"] > 5
        assert record["jailbreak_fails_without_dormant"] is True
    assert result["fraction_jailbreak_fails_without_dormant"] == 1.0 and result["mean_woke_up"] == 1.0


def test_the_full_set_does_not_jailbreak(model):
    # DORMANT wakes up but writes nothing: with or without it, the stream points along r and the model refuses
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=0.0)
    result = analyse_dormant(model, saes, MINIMAL, PROMPTS[:1], ["p0"])
    record = result["per_prompt"]["p0"]
    assert record["woke_up"] == [list(DORMANT)]
    assert record["score_full_set"] > 5 and record["score_without_dormant"] > 5
    assert record["jailbreak_fails_without_dormant"] is False
    assert result["fraction_jailbreak_fails_without_dormant"] == 0.0


def test_a_dormant_feature_that_stays_asleep_and_is_not_needed(model):
    # ablating ACTIVE pushes the stream against r: DORMANT stays off and the model complies either way
    saes = planted_saes(model, active_writes=PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, MINIMAL, PROMPTS[:1], ["p0"])
    record = result["per_prompt"]["p0"]
    assert record["dormant"] == [list(DORMANT)] and record["woke_up"] == []
    assert record["score_full_set"] < -5 and record["score_without_dormant"] < -5
    assert record["jailbreak_fails_without_dormant"] is False
    assert result["mean_woke_up"] == 0.0


def test_a_feature_dormant_on_some_prompts_only(model):
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, [list(ACTIVE), list(ALWAYS), list(CAKE)], PROMPTS[:2], ["cake", "poem"])
    assert result["dormant_on_every_prompt"] == [] and result["mean_dormant_per_prompt"] == 0.5
    cake, poem = result["per_prompt"]["cake"], result["per_prompt"]["poem"]
    assert (cake["n_dormant"], cake["n_active"]) == (0, 3) and "woke_up" not in cake
    assert poem["dormant"] == [list(CAKE)] and poem["woke_up"] == []
    assert result["fraction_jailbreak_fails_without_dormant"] == 0.0 and result["mean_woke_up"] == 0.0


def test_no_dormant_features(model):
    saes = planted_saes(model, active_writes=-PUSH, dormant_writes=4.0)
    result = analyse_dormant(model, saes, [list(ACTIVE), list(ALWAYS)], PROMPTS[:2], ["p0", "p1"])
    assert result["dormant_on_every_prompt"] == [] and result["mean_dormant_per_prompt"] == 0.0
    for record in result["per_prompt"].values():
        assert (record["n_dormant"], record["n_active"]) == (0, 2) and "woke_up" not in record
    assert result["fraction_jailbreak_fails_without_dormant"] is None and result["mean_woke_up"] is None
    assert analyse_dormant(model, saes, [], PROMPTS[:1], ["p0"]) == {"n_features": 0, "per_prompt": {}}
