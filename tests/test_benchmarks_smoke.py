"""The benchmark script (benchmarks/run.py) end to end on a tiny shape, on the CPU; no timings checked."""

import json

import pytest
import torch

from benchmarks import run, sae_lens_shim
from refusal_lens.pipeline import stages

TINY = ["--shapes", "tiny-gemma2", "--device", "cpu", "--quick", "--tokens", "20", "--batch-sizes", "4",
        "--gen-batch-sizes", "2", "--new-tokens", "3", "--pairs", "8", "--pair-chunks", "4",
        "--search-prompts", "3", "--search-seeds", "2", "--search-chunk", "8", "--candidates", "12",
        "--features-per-layer", "10", "--reps", "1", "--gen-reps", "1", "--warmup", "1"]


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only add contention (and much time on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_runs_on_a_tiny_shape(tmp_path, capsys, one_thread):
    results = run.main([*TINY, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "benchmarks.json").read_text())
    assert saved["shapes"][0]["shape"] == "tiny-gemma2"
    shape = results["shapes"][0]
    check = shape["check"]                                         # float32: the closed form is exact
    assert check["layer_edit_sparse_rel_err"] < 1e-5 and check["end_to_end_sparse_vs_splice"] < 1e-4
    assert check["end_to_end_edit_effect"] > 1e-3                  # and the edit does something
    assert 20 < shape["sae_l0"] < 150                               # realistic sparsity
    assert set(shape["forward"]["4"]) == {"plain", "sparse", "splice", "direction"}
    assert shape["generate"]["2"]["sparse"]["new_tokens"] > 0
    pairs = shape["pairs"]["4"]
    assert pairs["n_pairs"] == 8 and pairs["features_per_set"] == 12 - 5 and "pairs_universe" in pairs
    search = shape["search"]
    assert search["finished"] and search["steps_most"] == 1 + 6 * 3 and search["tracks"] == 3 * 2 + 2
    assert 1 < search["lock_steps"] <= search["steps_most"] and search["forward_passes"] > 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-1].startswith("tiny-gemma2") and "search" in table[-1]


def test_shim_jumprelu_matches_sae_lens():
    sae_lens = pytest.importorskip("sae_lens")
    if sae_lens.__name__ != "sae_lens":
        pytest.skip("the shim is installed as sae_lens in this process")
    cfg = dict(d_in=16, d_sae=40, apply_b_dec_to_input=True)
    real = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**cfg))
    shim = sae_lens_shim.JumpReLUSAE(sae_lens_shim.JumpReLUSAEConfig(**cfg))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            value = torch.randn(getattr(real, name).shape, generator=gen) * 0.3
            getattr(real, name).copy_(value.abs() if name == "threshold" else value)
            getattr(shim, name).copy_(getattr(real, name))
    x = torch.randn(5, 7, 16, generator=gen)
    acts = real.encode(x)
    assert (acts > 0).any() and (acts == 0).any()
    torch.testing.assert_close(shim.encode(x), acts)
    torch.testing.assert_close(shim.decode(acts), real.decode(acts))
    assert shim.cfg.architecture() == real.cfg.architecture() == "jumprelu"


SCALE_TINY = ["--shapes", "tiny-llama", "--device", "cpu", "--tokens", "24", "--new-tokens", "3",
              "--features-per-layer", "8", "--gen-prompts", "40", "--eval-prompts", "6", "--capability-prompts", "3",
              "--search-prompts", "3", "--train-prompts", "12", "--fm-prompts", "6", "--top-k", "4", "--seeds", "1",
              "--cases", "decode,generation,evaluation,pipeline", "--decode-rows", "4", "--decode-steps", "2",
              "--decode-reps", "1"]


def test_scale_benchmark_runs_every_case_on_a_tiny_shape(tmp_path, capsys, one_thread):
    from benchmarks import scale

    results = scale.main([*SCALE_TINY, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["shapes"][0]["shape"] == "tiny-llama"
    shape = results["shapes"][0]
    generation = shape["generation"]
    assert generation["auto_batch_size"] is None  # the CPU keeps its default size: nothing to remember
    assert generation["batch32_edited"]["new_tokens"] == 40 * 3 == generation["auto_edited"]["new_tokens"]
    assert generation["batch32_edited"]["forward_calls"] == 2 * 3  # 40 prompts: batches of 32 + 8, 3 steps each
    assert generation["auto_edited"]["forward_calls"] == 3 * 3     # the CPU's 16: 16 + 16 + 8
    reps = generation["auto_edited_reps"]                          # edited and plain took turns, twice
    assert len(reps) == 2 == len(generation["auto_plain_reps"])
    assert generation["auto_edited"] == min(reps, key=lambda r: r["wall_s"])
    assert all(r["first_call_ms"] > 0 and r["median_step_ms"] > 0 for r in reps)
    decode = shape["decode"]
    assert decode["rows"] == 4 and {"plain", "noop_hooks", "edited_eager", "edited_default",
                                    "edited_graphs_raised"} <= set(decode)
    assert decode["graphs_raised_vs_eager_max_abs_logit_diff"] == 0.0  # the CPU runs both eagerly: the same numbers
    assert "decode steps at 4 rows" in (tmp_path / "profile_decode_tiny-llama.txt").read_text()
    evaluation = shape["evaluation"]
    assert evaluation["methods"] == 8 and set(evaluation["auto"]["per_method_s"]) >= {"none", "directional_ablation"}
    pipeline = shape["pipeline"]
    assert list(pipeline["stages_s"]) == list(stages.NAMES)  # every stage
    assert pipeline["search_prompts"] == 3 and pipeline["search_forward_passes"] > 0
    assert "half the vocabulary" in pipeline["forced"]["refusal_tokens"]
    assert "probability 0.5" in pipeline["forced"]["search_tests"]
    steps_log = next(tmp_path.glob("scale-pipeline-*/lock_steps.jsonl"))  # one line a search lock-step
    steps = [json.loads(line) for line in steps_log.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and all(s["rows"] > 0 for s in steps)
    saved_run = json.loads(next(tmp_path.glob("scale-pipeline-*/run/results.json")).read_text())
    assert set(saved_run["categories"]["categories"]) == set(scale.CATEGORIES)  # the synthetic categories
    assert saved_run["jailbreaks"]["pairs"]                                      # the forced verdicts
    assert "pipeline through probes" in capsys.readouterr().out


def test_scale_benchmark_times_the_shared_passes_against_separate_ones(tmp_path, one_thread):
    from benchmarks import scale

    cut = SCALE_TINY.index("--cases")
    args = [*SCALE_TINY[:cut], "--cases", "evaluation", *SCALE_TINY[cut + 2:], "--eval-passes", "shared,separate"]
    evaluation = scale.main([*args, "--out", str(tmp_path)])["shapes"][0]["evaluation"]
    assert [evaluation[key]["passes"] for key in ("auto_0_shared", "auto_1_separate")] == ["shared", "separate"]
    assert all(set(evaluation[key]["per_method_s"]) >= {"none", "directional_ablation"}
               for key in ("auto_0_shared", "auto_1_separate"))
    with pytest.raises(SystemExit):
        scale.parse_args([*args, "--eval-passes", "both"])
