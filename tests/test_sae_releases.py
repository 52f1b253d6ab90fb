"""Every release of the installed sae_lens directory: the layer of each residual SAE, the variant
chosen, the refusals and their reasons, the loaded hook as the final word, the model check.
Nothing is downloaded: only the pretrained_saes.yaml that ships in the sae_lens wheel is read."""

import re
import warnings
from types import SimpleNamespace

import pytest
from sae_factory import make_sae
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

from refusal_lens.config import SAEConfig
from refusal_lens.saes import ModelMismatchWarning, SAELoadError, SAESet, SAESource, check_sae_spec, load_sae_set
from refusal_lens.saes.releases import (USABLE_KINDS, ReleaseSAE, compare_models, default_variant,
                                        hook_kind_and_layer, resolve_all)

RELEASES = resolve_all(get_pretrained_saes_directory())
# The directory's own Neuronpedia id names layer 20 for this layer-2 SAE (a slip in the yaml).
NEURONPEDIA_SLIPS = {("gemma-scope-9b-pt-res", "layer_2/width_16k/average_l0_8")}


def test_the_installed_directory_has_the_chat_model_releases():
    for name in ["gemma-scope-2-4b-it-res", "llama-3.1-8b-instruct-andyrdt", "qwen2.5-7b-instruct-andyrdt",
                 "gpt-oss-20b-andyrdt", "goodfire-llama-3.1-8b-instruct", "goodfire-llama-3.3-70b-instruct"]:
        assert RELEASES[name].layers, name


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_every_release_resolves_or_is_refused_with_a_reason(name):
    release = RELEASES[name]
    assert release.saes
    assert all(sae.kind != "other" for sae in release.saes), "every hook kind is recognised"
    reason = release.refusal_reason()
    if reason is None:
        for sae in release.saes:
            assert sae.usable or sae.why_not, sae
            if sae.kind in USABLE_KINDS:
                assert sae.hook_layer is not None, sae
        chosen = release.select()
        assert sorted(chosen) == release.layers
        assert all(sae.layer == layer and sae.usable for layer, sae in chosen.items())
        assert not re.search(r"(^|[-_])(att|attn|mlp|transcoders?|clt)([-_]|$)", name)
    else:
        assert all(not sae.usable for sae in release.saes)
        assert "refusal-lens edits the residual stream" in reason and name in reason
        with pytest.raises(SAELoadError, match="no residual-stream SAE"):
            SAESet.from_release(name)


def test_releases_named_residual_resolve_and_the_others_are_refused():
    resolved = {n for n, r in RELEASES.items() if r.refusal_reason() is None}
    refused = set(RELEASES) - resolved
    assert all(re.search(r"(^|[-_])res([-_]|$)|resid-post|res_s|andyrdt|goodfire|qwen-scope|temporal|qresearch"
                         r"|llama_scope_lxr|r1_distill|saebench|sae_bench", n) for n in resolved), resolved
    assert all(re.search(r"att|mlp|transcoder|clt|resid-mid|hook-z|llama_scope_lx[am]_", n) for n in refused), refused
    assert len(resolved) >= 80 and len(refused) >= 80


def test_layers_agree_with_the_directorys_neuronpedia_ids():
    """Independent evidence: Neuronpedia ids start with the layer (``gemma-2-2b/12-gemmascope-res-16k``)."""
    checked = 0
    for name, release in RELEASES.items():
        for sae in release.usable:
            match = re.match(r"[^/]+/(\d+)-", sae.neuronpedia or "")
            if match and (name, sae.sae_id) not in NEURONPEDIA_SLIPS:
                # Neuronpedia counts gpt2's last hook_resid_post as hook_resid_pre of block 12.
                assert int(match.group(1)) in (sae.hook_layer, sae.layer + 1), (name, sae)
                checked += 1
    assert checked > 500


# --- hand-checked, one release of each family -------------------------------------------------
@pytest.mark.parametrize("release, sae_id, layer", [
    ("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical", 0),
    ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", 12),
    ("gemma-scope-2b-pt-res-canonical", "layer_25/width_65k/canonical", 25),
    ("gemma-scope-2-4b-it-res", "layer_9_width_16k_l0_small", 9),
    ("gemma-scope-2-4b-it-res", "layer_17_width_262k_l0_medium_seed_1", 17),
    ("gemma-scope-2-4b-it-res", "layer_29_width_1m_l0_big", 29),
    ("llama_scope_lxr_8x", "l0r_8x", 0),
    ("llama_scope_lxr_8x", "l11r_8x", 11),
    ("llama_scope_lxr_8x", "l31r_8x", 31),
    ("llama-3.1-8b-instruct-andyrdt", "resid_post_layer_3_trainer_1", 3),
    ("llama-3.1-8b-instruct-andyrdt", "resid_post_layer_27_trainer_1", 27),
    ("goodfire-llama-3.1-8b-instruct", "layer_19", 19),
    ("goodfire-llama-3.3-70b-instruct", "layer_50", 50),
    ("qwen-scope-3-8b-base-w64k-l50", "layer0", 0),
    ("qwen-scope-3-8b-base-w64k-l50", "layer35", 35),
    ("sae_bench_gemma-2-2b_topk_width-2pow16_date-1109", "blocks.12.hook_resid_post__trainer_3", 12),
    ("gpt2-small-res-jb", "blocks.5.hook_resid_pre", 4),  # input of block 5 = output of block 4
    ("gpt2-small-res-jb", "blocks.11.hook_resid_post", 11),
    ("mistral-7b-res-wg", "blocks.8.hook_resid_pre", 7),
])
def test_hand_checked_layers(release, sae_id, layer):
    (sae,) = [s for s in RELEASES[release].saes if s.sae_id == sae_id]
    assert sae.layer == layer


def test_hand_checked_layer_lists():
    assert RELEASES["gemma-scope-2b-pt-res-canonical"].layers == list(range(26))
    assert RELEASES["gemma-scope-2-4b-it-res"].layers == [9, 17, 22, 29]
    assert RELEASES["llama_scope_lxr_8x"].layers == list(range(32))
    assert RELEASES["llama-3.1-8b-instruct-andyrdt"].layers == [3, 7, 11, 15, 19, 23, 27]
    assert RELEASES["goodfire-llama-3.1-8b-instruct"].layers == [19]
    assert RELEASES["qwen-scope-3-8b-base-w64k-l50"].layers == list(range(36))
    assert RELEASES["gpt2-small-res-jb"].layers == list(range(12))


def test_what_cannot_be_used_says_why():
    gpt2 = {s.sae_id: s for s in RELEASES["gpt2-small-res-jb"].saes}
    assert not gpt2["blocks.0.hook_resid_pre"].usable
    assert "embeddings" in gpt2["blocks.0.hook_resid_pre"].why_not
    embedding = [s for s in RELEASES["gemma-scope-2b-pt-res"].saes if s.sae_id.startswith("embedding/")]
    assert embedding and all(s.kind == "embed" and "embeddings" in s.why_not for s in embedding)
    for release, words in [("gemma-scope-2b-pt-att-canonical", "attention output"),
                           ("llama_scope_lxm_8x", "MLP output"),
                           ("gemma-scope-2-4b-it-transcoders", "transcoder"),
                           ("mwhanna-qwen3-4b-transcoders", "transcoder"),
                           ("gpt2-small-resid-mid-v5-32k", "middle of a block"),
                           ("gpt2-small-hook-z-kk", "attention output")]:
        with pytest.raises(SAELoadError, match=words):
            check_sae_spec(release)


# --- variants ---------------------------------------------------------------------------------
def test_default_variant_is_canonical_else_smallest_width_and_median_l0():
    assert SAESet.from_release("gemma-scope-2b-pt-res-canonical", [12]).sources[12].sae_id == \
        "layer_12/width_16k/canonical"
    assert SAESet.from_release("gemma-scope-2-4b-it-res", [17]).sources[17].sae_id == "layer_17_width_16k_l0_medium"
    # L0s at layer 12, width 16k: 22, 41, 82, 176, 445 -> the median, 82
    assert SAESet.from_release("gemma-scope-2b-pt-res", [12]).sources[12].sae_id == "layer_12/width_16k/average_l0_82"
    # final trainers 0..5 (checkpoints left out) -> the lower median, trainer_2
    assert SAESet.from_release("sae_bench_gemma-2-2b_topk_width-2pow12_date-1109", [12]).sources[12].sae_id == \
        "blocks.12.hook_resid_post__trainer_2"


def test_a_resid_post_sae_wins_over_a_resid_pre_one_for_the_same_layer():
    post = ReleaseSAE("blocks.4.hook_resid_post", "p", "resid_post", 4)
    pre = ReleaseSAE("blocks.5.hook_resid_pre", "q", "resid_pre", 5)
    assert pre.layer == post.layer == 4 and default_variant([pre, post]) is post


def test_width_and_l0_pick_a_variant():
    saes = load_sae_set("gemma-scope-2-4b-it-res:262k:big", [9, 29])
    assert {L: s.sae_id for L, s in saes.sources.items()} == \
        {9: "layer_9_width_262k_l0_big", 29: "layer_29_width_262k_l0_big"}
    assert load_sae_set("gemma-scope-2-4b-it-res::small", [22]).sources[22].sae_id == "layer_22_width_16k_l0_small"
    assert SAESet.from_release("gemma-scope-2-4b-it-res", [17], width="1m", l0="medium").sources[17].sae_id == \
        "layer_17_width_1m_l0_medium"
    assert load_sae_set("gemma-scope-2b-pt-res-canonical:65k", [5]).sources[5].sae_id == "layer_5/width_65k/canonical"


def test_bad_variants_and_layers_list_what_the_release_has():
    with pytest.raises(SAELoadError, match=r"no width '3k'; widths: 16k, 65k, 262k, 1m"):
        check_sae_spec("gemma-scope-2-4b-it-res:3k")
    with pytest.raises(SAELoadError, match=r"no L0 variant 'huge'.*variants: big, medium, medium_seed_1, small"):
        SAESet.from_release("gemma-scope-2-4b-it-res", l0="huge")
    with pytest.raises(SAELoadError, match=r"no SAE for layer\(s\) \[10\].*layers \[9, 17, 22, 29\]"):
        SAESet.from_release("gemma-scope-2-4b-it-res", [10])
    with pytest.raises(SAELoadError, match="Unknown SAE release.*goodfire-llama-3.1-8b-instruct"):
        SAESet.from_release("goodfire-llama-3.1-8b-instuct")


# --- the loaded SAE's hook is the final word --------------------------------------------------
def _load_with_hook(monkeypatch, hook_name):
    def load(self, device, dtype):
        sae = make_sae("topk", 32)
        sae.cfg.metadata.hook_name = hook_name
        return sae
    monkeypatch.setattr(SAESource, "load", load)


def test_the_loaded_hook_confirms_the_layer(monkeypatch):
    _load_with_hook(monkeypatch, "blocks.11.hook_resid_post")
    assert SAESet.from_release("llama_scope_lxr_8x", [11])[11].cfg.d_in == 32
    _load_with_hook(monkeypatch, "blocks.5.hook_resid_pre")
    assert SAESet.from_release("gpt2-small-res-jb", [4])[4].cfg.d_in == 32


def test_a_loaded_hook_that_disagrees_is_an_error(monkeypatch):
    _load_with_hook(monkeypatch, "blocks.12.hook_resid_post")
    with pytest.raises(SAELoadError, match=r"resolved to layer 11.*'blocks.12.hook_resid_post'"):
        SAESet.from_release("llama_scope_lxr_8x", [11])[11]
    _load_with_hook(monkeypatch, "blocks.11.hook_mlp_out")
    with pytest.raises(SAELoadError, match="mlp of block 11"):
        SAESet.from_release("llama_scope_lxr_8x", [11])[11]


def test_a_single_folder_with_a_resid_pre_hook_is_the_previous_layer(tmp_path):
    sae = make_sae("topk", 32)
    sae.cfg.metadata.hook_name = "blocks.4.hook_resid_pre"
    sae.save_model(str(tmp_path / "pre"))
    assert SAESet.from_disk(tmp_path / "pre").layers == [3]
    sae.cfg.metadata.hook_name = "blocks.4.hook_mlp_out"
    sae.save_model(str(tmp_path / "mlp"))
    with pytest.raises(SAELoadError, match="not a block's hook_resid_post"):
        SAESet.from_disk(tmp_path / "mlp")


def test_hook_names():
    assert hook_kind_and_layer("blocks.12.hook_resid_post") == ("resid_post", 12)
    assert hook_kind_and_layer("blocks.3.hook_resid_pre") == ("resid_pre", 3)
    assert hook_kind_and_layer("blocks.3.attn.hook_z") == ("attn", 3)
    assert hook_kind_and_layer("blocks.3.hook_mlp_in")[0] == "mlp"


# --- the model a release was made for ---------------------------------------------------------
@pytest.mark.parametrize("release_model, loaded, verdict", [
    ("gemma-2-2b", "google/gemma-2-2b-it", "base-vs-it"),
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "base-vs-it"),
    ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/llama-3.1-8b-instruct", "same"),
    ("google/gemma-3-4b-it", "google/gemma-3-4b-pt", "base-vs-it"),
    ("Qwen/Qwen3-8B-Base", "Qwen/Qwen3-8B", "base-vs-it"),
    ("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.2", "base-vs-it"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B", "base-vs-it"),
    ("gemma-2-2b", "google/gemma-2-9b-it", "different"),
    ("gemma-2b-it", "google/gemma-2-2b-it", "different"),
    ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "different"),
    ("gemma-2-2b", None, None),
])
def test_compare_models(release_model, loaded, verdict):
    assert compare_models(release_model, loaded) == verdict


def test_a_model_mismatch_warns_and_strict_fails():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = SAESet.from_release("gemma-scope-2b-pt-res-canonical", [0]).check_against(26, 2304, "google/gemma-2-2b-it")
    assert "gemma-2-2b" in same.describe()["model_note"]
    with pytest.warns(ModelMismatchWarning, match="made for gemma-2-2b.*Llama-3.1-8B-Instruct"):
        SAESet.from_release("gemma-scope-2b-pt-res-canonical", [0]).check_against(
            26, 2304, "meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(SAELoadError, match="strict"):
        SAESet.from_release("gemma-scope-2b-pt-res-canonical", [0]).check_against(
            26, 2304, "meta-llama/Llama-3.1-8B-Instruct", strict=True)


def test_the_config_passes_the_model_and_strict():
    chat_model = SimpleNamespace(n_layers=32, d_model=4096, name="Qwen/Qwen2.5-7B-Instruct", device="cpu")
    config = SAEConfig(source="llama-3.1-8b-instruct-andyrdt", layers=[3], strict=True)
    with pytest.raises(SAELoadError, match="made for meta-llama/Llama-3.1-8B-Instruct"):
        config.load(chat_model)
    with pytest.warns(ModelMismatchWarning):
        SAEConfig(source="llama-3.1-8b-instruct-andyrdt", layers=[3]).load(chat_model)
