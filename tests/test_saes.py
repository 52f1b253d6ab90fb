"""SAE sets: folders on disk, pretrained-release maps, lazy loading, checks against the model."""

import pytest
from sae_factory import make_sae

from refusal_lens.saes import SAELoadError, SAESet, load_sae_set


def save_saes(folder, d_in, layers=(0, 2)):
    for layer in layers:
        make_sae("jumprelu", d_in, layer=layer, seed=layer).save_model(str(folder / f"layer_{layer}"))
    return folder


def test_from_disk_loads_lazily(tmp_path):
    saes = SAESet.from_disk(save_saes(tmp_path, 64))
    assert saes.layers == [0, 2] and saes.loaded_layers == []
    assert saes[2].cfg.d_in == 64 and saes.loaded_layers == [2]
    saes.unload()
    assert saes.loaded_layers == []


def test_d_in_mismatch_is_caught_before_loading(tmp_path):
    saes = SAESet.from_disk(save_saes(tmp_path, 32))
    with pytest.raises(SAELoadError, match="d_in=32.*d_model=64"):
        saes.check_against(n_layers=4, d_model=64)
    assert saes.loaded_layers == []


def test_layer_out_of_range(tmp_path):
    saes = SAESet.from_disk(save_saes(tmp_path, 64, layers=(0, 9)))
    with pytest.raises(SAELoadError, match=r"layers \[9\] out of range"):
        saes.check_against(n_layers=4, d_model=64)


def test_missing_layers_and_empty_folder(tmp_path):
    with pytest.raises(SAELoadError, match="No sae_lens SAEs"):
        SAESet.from_disk(tmp_path)
    save_saes(tmp_path, 64)
    with pytest.raises(SAELoadError, match=r"no SAE for layers \[1\]"):
        SAESet.from_disk(tmp_path, layers=[1])


def test_single_sae_folder_layer_from_hook(tmp_path):
    make_sae("topk", 64, layer=3).save_model(str(tmp_path))
    assert SAESet.from_disk(tmp_path).layers == [3]


def test_pretrained_release_maps_all_layers_without_downloading():
    gemma = SAESet.from_release("gemma-scope-2b-pt-res-canonical")
    assert gemma.layers == list(range(26))
    assert gemma.sources[12].sae_id == "layer_12/width_16k/canonical"
    assert SAESet.from_release("gemma-scope-2b-pt-res-canonical", [5], width="65k").sources[5].sae_id == \
        "layer_5/width_65k/canonical"
    llama = SAESet.from_release("llama_scope_lxr_8x", "all")
    assert llama.layers == list(range(32)) and llama.sources[11].sae_id == "l11r_8x"
    assert llama.loaded_layers == []


def test_unknown_release_suggests_names():
    with pytest.raises(SAELoadError, match="Unknown SAE release.*gemma-scope-2b-pt-res-canonical"):
        SAESet.from_release("gemma-scope-2b-pt-res-canonicl")
    with pytest.raises(SAELoadError, match="Unknown SAEs"):
        load_sae_set("no-such-saes")
    with pytest.raises(SAELoadError, match="has no SAE"):
        SAESet.from_release("llama_scope_lxr_8x", [40])


# --- named sources (the registry) -------------------------------------------------------
@pytest.fixture
def sae_sources(monkeypatch):
    """A fresh registry (the built-in names only), so that a test's names do not leak."""
    from refusal_lens.named_sources import NamedSources
    from refusal_lens.saes import registry

    monkeypatch.setattr(registry, "_sources", NamedSources(registry.SAE_SOURCES_GROUP,
                                                           registry.BUILTIN_SAE_SOURCES))
    return registry


def test_a_registered_name_loads_and_keeps_the_layers_asked_for(sae_sources, tmp_path):
    calls = []
    folder = save_saes(tmp_path, 64, layers=(0, 2, 5))

    def loader(device, dtype):
        calls.append((device, dtype))
        return SAESet.from_disk(folder, device=device, dtype=dtype)

    sae_sources.register_sae_source("mine", loader)
    assert load_sae_set("mine").layers == [0, 2, 5]
    assert load_sae_set("mine", [2, 5]).layers == [2, 5]
    assert calls == [("cpu", "float32")] * 2
    with pytest.raises(SAELoadError, match="no SAE for layers \\[7\\]"):
        load_sae_set("mine", [2, 7])


def test_unknown_saes_error_lists_the_registered_names(sae_sources):
    sae_sources.register_sae_source("mine", lambda device, dtype: None)
    with pytest.raises(SAELoadError, match="registered name \\('mine', 'organism'\\)"):
        load_sae_set("no-such-saes")
