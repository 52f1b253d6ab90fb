"""Sparse slices of an SAE: one class per architecture, each against the whole SAE."""

import pytest
import torch
from sae_factory import make_sae
from sae_lens import GatedSAE, GatedSAEConfig

from refusal_lens.saes.slices import (ALIGN, JumpReLUSlice, SparseSAESlice, StandardSlice, TopKSlice, cached_slice,
                                      sparse_slice)

D_IN = 32
FEATURES = [3, 17, 40, 41, 90]
CLASSES = {"standard": StandardSlice, "jumprelu": JumpReLUSlice, "topk": TopKSlice}


def residual(seed=0):
    return torch.randn(4, 5, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("architecture", sorted(CLASSES))
def test_slice_encodes_like_the_whole_sae(architecture):
    sae = make_sae(architecture, D_IN, seed=1)
    sparse = sparse_slice(sae, FEATURES, torch.device("cpu"))
    assert type(sparse) is CLASSES[architecture]
    x = residual()
    acts, out_scale = sparse.encode(x)
    full = sae.encode(x)
    assert (full[..., FEATURES] > 0).any(), "some chosen feature should fire"
    torch.testing.assert_close(acts, full[..., FEATURES], rtol=1e-5, atol=1e-5)
    assert out_scale == 1.0
    assert sparse.width == (len(FEATURES) if architecture == "topk" else -(-len(FEATURES) // ALIGN) * ALIGN)


@pytest.mark.parametrize("architecture", sorted(CLASSES))
@pytest.mark.parametrize("kind, value", [("zero", 0.0), ("scale", -2.0), ("set", 5.0)])
def test_slice_edit_is_the_splice_with_the_error_kept(architecture, kind, value):
    sae = make_sae(architecture, D_IN, seed=2)
    x = residual(1)
    acts = sae.encode(x)
    edited = acts.clone()
    new = {"zero": torch.zeros_like, "scale": lambda a: value * a, "set": lambda a: torch.full_like(a, value)}[kind]
    edited[..., FEATURES] = new(acts[..., FEATURES])
    reference = x + sae.decode(edited) - sae.decode(acts)
    got = sparse_slice(sae, FEATURES, torch.device("cpu")).edit(x, kind, value)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_unsupported_architecture_is_a_clear_error():
    sae = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=64))
    with pytest.raises(NotImplementedError, match="support.*'gated'"):
        sparse_slice(sae, [1], torch.device("cpu"))
    with pytest.raises(NotImplementedError, match="'gated'"):
        cached_slice(sae, [1], torch.device("cpu"))


def test_the_base_class_is_not_a_slice():
    with pytest.raises(TypeError):
        SparseSAESlice(make_sae("standard", D_IN), [1], torch.device("cpu"))


def test_out_of_range_feature_is_a_clear_error():
    with pytest.raises(IndexError, match="out of range"):
        sparse_slice(make_sae("jumprelu", D_IN, d_sae=16), [3, 16], torch.device("cpu"))


def test_cache_reuses_a_slice_until_the_weights_change():
    sae = make_sae("jumprelu", D_IN, seed=3)
    cpu = torch.device("cpu")
    first = cached_slice(sae, FEATURES, cpu)
    assert cached_slice(sae, FEATURES, cpu) is first
    assert cached_slice(sae, FEATURES[:2], cpu) is not first
    with torch.no_grad():
        sae.W_enc.mul_(2.0)
    fresh = cached_slice(sae, FEATURES, cpu)
    assert fresh is not first
    torch.testing.assert_close(fresh.encode(residual())[0], sae.encode(residual())[..., FEATURES], rtol=1e-5, atol=1e-5)


def test_topk_slices_are_not_kept():
    sae = make_sae("topk", D_IN, seed=4)
    cpu = torch.device("cpu")
    assert cached_slice(sae, FEATURES, cpu) is not cached_slice(sae, FEATURES, cpu)
