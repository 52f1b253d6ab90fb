"""The attribution benchmark (benchmarks/attribution.py): its dense per-layer IG computes what the
library's sparse one does, and the script runs end to end on a tiny shape on the CPU."""

import json

import pytest
import torch
from conftest import PROMPTS, tiny_gemma2, tiny_llama
from sae_factory import make_sae

from benchmarks import attribution as bench
from refusal_lens.attribution import attribute
from refusal_lens.saes import SAESet

LAYERS = [0, 2, 3]


def _saes(chat_model, architecture="jumprelu"):
    return SAESet.from_saes({L: make_sae(architecture, chat_model.d_model, seed=L, layer=L).to(dtype=chat_model.dtype)
                             for L in LAYERS})


@pytest.fixture(scope="module")
def llama64():
    chat_model = tiny_llama()
    chat_model.model.double()
    return chat_model


@pytest.mark.parametrize("model, architecture", [("llama64", "jumprelu"), ("llama64", "topk"), ("gemma32", "jumprelu")])
def test_dense_ig_equals_the_library_ig(request, model, architecture):
    chat_model = request.getfixturevalue(model) if model == "llama64" else tiny_gemma2()
    saes = _saes(chat_model, architecture)
    direction = torch.randn(chat_model.d_model, generator=torch.Generator().manual_seed(1), dtype=chat_model.dtype)
    ours = attribute(chat_model, saes, PROMPTS, direction, steps=3, batch_size=3)
    dense = bench.dense_integrated_gradients(chat_model, saes, PROMPTS, direction, steps=3, batch_size=3)
    tolerance = {"rtol": 1e-9, "atol": 1e-11} if chat_model.dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    assert ours.lengths.min() < ours.lengths.max(), "the batches should be padded"
    for L in LAYERS:
        got, ref = ours.layers[L], dense[L]
        assert len(ref.feature) > 0 and ref.attribution.abs().max() > 1e-6
        for name in ("prompt", "position", "feature"):  # the same entries, in the same order
            assert torch.equal(getattr(got, name), getattr(ref, name)), name
        torch.testing.assert_close(got.attribution, ref.attribution.to(got.attribution.dtype), **tolerance)
        torch.testing.assert_close(got.error, ref.error.to(got.error.dtype), **tolerance)
    report = bench.compare(ours, dense, {L: saes[L].cfg.d_sae for L in LAYERS})
    assert report["worst"]["attribution_rel_err"] < 1e-4 and report["worst"]["error_rel_err"] < 1e-4
    assert all(v["entries_only_ours"] == v["entries_only_dense"] == 0 for v in report["per_layer"].values())


def test_compare_sees_a_wrong_attribution(llama64):
    saes = _saes(llama64)
    direction = torch.randn(llama64.d_model, generator=torch.Generator().manual_seed(1), dtype=llama64.dtype)
    ours = attribute(llama64, saes, PROMPTS[:2], direction, steps=2)
    dense = bench.dense_integrated_gradients(llama64, saes, PROMPTS[:2], direction, steps=2)
    dense[2].attribution[0] += 10 * dense[2].attribution.abs().max()
    dense[3].feature[-1] = (dense[3].feature[-1] + 1) % saes[3].cfg.d_sae
    report = bench.compare(ours, dense, {L: saes[L].cfg.d_sae for L in LAYERS})["per_layer"]
    assert report["2"]["attribution_rel_err"] > 0.5 and report["0"]["attribution_rel_err"] < 1e-9
    assert report["3"]["entries_only_ours"] >= 1 and report["3"]["entries_only_dense"] >= 1


def test_plain_forward_backward_reads_the_gradient_at_the_embeddings(llama64):
    """The lower bound's backward is a real gradient: it matches a finite difference."""
    batch = llama64.tokenize(PROMPTS[:2])
    from refusal_lens.activations import model_inputs
    inputs = model_inputs(batch)
    target = torch.tensor([5, 7])
    grad = bench.plain_forward_backward(llama64, inputs, target, 3)()
    torch.testing.assert_close(bench.plain_forward_backward(llama64, inputs, target, 3, head_fix=True)(), grad)
    embeddings = llama64.model.get_input_embeddings().weight
    token = int(batch["input_ids"][1, -2])

    def metric():
        logits = bench.plain_forward(llama64, inputs)()
        return (logits[:, 5] - logits[:, 3])[0] + (logits[:, 7] - logits[:, 3])[1]

    eps = 1e-3  # central difference; smaller steps meet the float32 parts of the forward (RoPE)
    with torch.no_grad():
        embeddings[token, 0] += eps
        up = metric()
        embeddings[token, 0] -= 2 * eps
        down = metric()
        embeddings[token, 0] += eps
    expected = grad[..., 0][batch["input_ids"] == token].sum()
    assert float(expected) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-4)
    assert all(p.grad is None for p in llama64.model.parameters())


def test_attribution_benchmark_runs_on_a_tiny_shape(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = bench.main(["--shapes", "tiny-llama", "--device", "cpu", "--prompts", "6", "--tokens", "20",
                              "--steps", "3", "--ig-batch", "2", "--atp-batch", "3", "--reps", "2", "--ig-core", "--profile",
                              "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "attribution.json").read_text())
    shape = results["shapes"][0]
    assert saved["shapes"][0]["shape"] == "tiny-llama" and shape["layers"] == [0, 1, 2]
    assert set(shape["median_s"]) == {"ig", "dense", "atp", "bound", "bound_head"} and len(shape["times_s"]["atp"]) == 2
    worst = shape["agreement"]["worst"]                      # float32 on the CPU
    assert worst["attribution_rel_err"] < 1e-4 and worst["error_rel_err"] < 1e-4 and worst["total_rel_err"] < 1e-4
    assert shape["entries_per_layer"] > 0 and shape["ig_core"]["batches"] == 3
    assert set(shape["goals"]) == {"atp_over_bound", "atp_over_bound_head", "dense_over_ig"}
    assert shape["decompose"]["product_vs_gather_rel_err"] < 1e-5 and shape["decompose"]["entries"] > 0
    assert "=== atp" in (tmp_path / "profile_attribution_tiny-llama.txt").read_text()
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-1].startswith("tiny-llama") and "dense vs ours" in table[-1]
