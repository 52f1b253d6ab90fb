"""A model dispatched by accelerate (what ``--device-map auto`` does), with layers offloaded to the
CPU and to disk, gives the plain model's scores, edits, feature reads, search scores and
attributions: accelerate's hooks run beside ours, and every edit happens where its layer runs."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import dispatch_model
from conftest import PROMPTS, tiny_llama
from sae_factory import make_sae

from refusal_lens.activations import read_features, residuals
from refusal_lens.attribution import attribute
from refusal_lens.generation import generate
from refusal_lens.interventions import ActivationAddition, DirectionalAblation, FeatureIntervention, FeatureOp
from refusal_lens.pipeline.search import SetEvaluator
from refusal_lens.prefix_cache import build_prefix_cache
from refusal_lens.saes import SAESet
from refusal_lens.scoring import refusal_scores

CLOSE = {"rtol": 1e-5, "atol": 1e-5}
ON_DISK = ("model.layers.1", "model.layers.3")


@pytest.fixture(scope="module")
def plain():
    return tiny_llama(seed=3)


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory):
    """The same weights, every module dispatched: layers 1 and 3 offloaded to disk, the rest to
    CPU memory (weights on ``meta`` between calls, put in place by accelerate's hooks)."""
    chat = tiny_llama(seed=3)
    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head",
             *(f"model.layers.{i}" for i in range(chat.n_layers))]
    device_map = {name: "disk" if name in ON_DISK else "cpu" for name in names}
    # main_device as a torch.device: accelerate then offloads the "cpu" modules as it does
    # next to a GPU, instead of leaving them in place (the CPU is their execution device here)
    folder = tmp_path_factory.mktemp("offload")
    dispatch_model(chat.model, device_map, main_device=torch.device("cpu"), offload_dir=folder)
    chat.metadata["offload_dir"] = folder
    return chat


@pytest.fixture(scope="module")
def saes(plain):
    return SAESet.from_saes({L: make_sae("jumprelu", plain.d_model, seed=L, layer=L) for L in (1, 2, 3)})


@pytest.fixture(scope="module")
def features(plain, saes):
    """The two features of layers 1 and 2, and one of layer 3, most active on the prompts."""
    active = read_features(plain, saes, PROMPTS, all_active=[1, 2, 3], reduce="max")
    strongest = active.values.amax(0).argsort(descending=True).tolist()
    chosen = []
    for layer, count in ((1, 2), (2, 2), (3, 1)):
        chosen += [active.keys[j] for j in strongest if active.keys[j][0] == layer][:count]
    return chosen


def test_the_model_really_is_offloaded(dispatched):
    assert all(p.device.type == "meta" for p in dispatched.model.parameters())
    on_disk = json.loads((dispatched.metadata["offload_dir"] / "index.json").read_text())
    assert {name.rsplit(".", 2)[0] for name in on_disk} >= {f"{m}.mlp" for m in ON_DISK}
    assert not any(name.startswith("model.layers.0.") for name in on_disk)  # that one is in CPU memory
    assert dispatched.device == torch.device("cpu") and dispatched.layer_device(3) == torch.device("cpu")


def test_scores_and_generation_are_the_plain_models(plain, dispatched):
    torch.testing.assert_close(refusal_scores(dispatched, PROMPTS), refusal_scores(plain, PROMPTS), **CLOSE)
    assert generate(dispatched, PROMPTS, max_new_tokens=5) == generate(plain, PROMPTS, max_new_tokens=5)


def test_every_intervention_edits_as_on_the_plain_model(plain, dispatched, saes, features):
    direction = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(0))
    edits = {
        "ablation": [DirectionalAblation(direction)],
        "addition": [ActivationAddition(direction, 2, coefficient=3.0)],
        "features zero": [FeatureIntervention(saes, features)],
        "features scale": [FeatureIntervention(saes, features, FeatureOp("scale", 4.0))],
        "per-row sets": [FeatureIntervention.for_rows(saes, [features[:2], [], features[2:], features])],
    }
    for name, interventions in edits.items():
        want = residuals(plain, PROMPTS, [1, 2, 3], interventions=interventions)
        got = residuals(dispatched, PROMPTS, [1, 2, 3], interventions=interventions)
        clean = residuals(plain, PROMPTS, [3])[3]
        assert (want[3] - clean).abs().max() > 1e-3, f"{name} edits nothing"
        for layer in want:
            torch.testing.assert_close(got[layer], want[layer], **CLOSE, msg=f"{name}, layer {layer}")
        torch.testing.assert_close(refusal_scores(dispatched, PROMPTS, interventions=interventions),
                                   refusal_scores(plain, PROMPTS, interventions=interventions), **CLOSE)
    assert (generate(dispatched, PROMPTS, max_new_tokens=4, interventions=edits["features scale"])
            == generate(plain, PROMPTS, max_new_tokens=4, interventions=edits["features scale"]))


def test_feature_reads_are_the_plain_models(plain, dispatched, saes, features):
    kwargs = {"all_active": [3], "positions": [-1, -2], "interventions": [FeatureIntervention(saes, features[:2])]}
    want = read_features(plain, saes, PROMPTS, features, **kwargs)
    got = read_features(dispatched, saes, PROMPTS, features, **kwargs)
    assert got.keys == want.keys and torch.equal(got.mask, want.mask)
    torch.testing.assert_close(got.values, want.values, **CLOSE)


def test_search_scores_from_the_prefix_cache_are_the_plain_models(plain, dispatched, saes, features):
    pairs = [(p, features[:k]) for p in range(len(PROMPTS)) for k in (0, 2, 5)]

    def scores(chat):
        cache = build_prefix_cache(chat, PROMPTS, 1)
        return SetEvaluator(chat, saes, cache, FeatureOp("zero"), rows_per_forward=5, universe=features)(pairs)[0]

    want = scores(plain)
    assert (want[2::3] - want[0::3]).abs().max() > 1e-3  # the sets change the scores
    torch.testing.assert_close(scores(dispatched), want, **CLOSE)


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_attribution_is_the_plain_models(plain, dispatched, saes, method):
    direction = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(1))
    want = attribute(plain, saes, PROMPTS, direction, method=method, steps=3, batch_size=2)
    got = attribute(dispatched, saes, PROMPTS, direction, method=method, steps=3, batch_size=2)
    torch.testing.assert_close(got.m_clean, want.m_clean, **CLOSE)
    for layer, entries in want.layers.items():
        assert torch.equal(got.layers[layer].feature, entries.feature)
        torch.testing.assert_close(got.layers[layer].attribution, entries.attribution, **CLOSE)
        torch.testing.assert_close(got.layers[layer].error, entries.error, **CLOSE)
