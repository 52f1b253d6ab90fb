#!/usr/bin/env python
"""Speed of refusal-lens's hot loops on real model shapes (issue 6).

    python benchmarks/run.py [--shapes gemma2-2b,llama31-8b] [--quick] [--profile]

Builds each model shape from its config (random weights, bf16 on a GPU) and a JumpReLU SAE of
Gemma Scope / Llama Scope size at every layer, in place: nothing is downloaded (without
sae_lens installed, ``benchmarks/sae_lens_shim.py`` stands in for it). Each target is timed
side by side with its plain counterpart in one process, in interleaved rounds after warm-up,
the garbage collector paused; medians are reported, with the ratio of the fastest calls next to
them. The table comes last; the full results go to ``$OUT/benchmarks.json`` (or ``--out``).

Cases, per shape:
  forward     one forward pass (``logits_to_keep=1``, as refusal scoring runs it): plain, with
              50 features a layer zero-ablated at every layer (sparse closed form), the full
              splice reference (encode, edit, decode, add the error), directional ablation
  generate    greedy generation (``model.generate`` with generate_batch's arguments), plain vs
              the same feature ablation at every position, generated ones included (with the
              decode-step edits replayed from CUDA graphs, the default, and without)
  pairs       refusal scores of many (prompt, feature set) pairs, one set per batch row
              (``FeatureIntervention.for_rows``, built inside the timed call as a search builds
              it), vs the plain forward + score of the same rows (the plain-forward bound)
  search      ``refusal_lens.pipeline.search.greedy_minimal_sets`` (METHOD.md §4.2), Gemma shape:
              100 prompts, 200 candidates, 3 seeds, per-prompt and shared tracks; measured wall
              time, and the worst case projected from the measured step time
  memory      peak GPU memory: model, SAEs at every layer, each forward variant

``--profile`` adds torch.profiler tables (``$OUT/profile_<shape>.txt``) and a decode-step
diagnostic: plain, empty hooks, one-op hooks, the edit with and without CUDA graphs, the host
time spent in the edit's hook, and a CUDA sync-debug check of the edit.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "src", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from transformers import BatchEncoding  # noqa: E402

GiB = 1024 ** 3


def choose_sae_backend(choice: str) -> None:
    """sae_lens if importable (or asked for), else the shim; must run before refusal_lens loads."""
    if choice == "shim":
        from benchmarks import sae_lens_shim

        sae_lens_shim.install()
        return
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        if choice == "sae_lens":
            raise
        from benchmarks import sae_lens_shim

        sae_lens_shim.install()


# --- timing ------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], *, reps: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns (rep 1 of each, rep 2...)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    collecting = gc.isenabled()
    gc.disable()  # as timeit does: no collector pauses inside the timed calls
    try:
        for _ in range(reps):
            gc.collect()
            for name, fn in fns.items():
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return times


def ratios(times: dict[str, list[float]], work: float, base: str = "plain") -> dict:
    """Per-variant throughput and its ratio to ``base``: of the medians (the headline), the
    median of the per-round ratios (rounds are interleaved, so each pairs calls made close in
    time), and of the fastest calls (host noise only ever adds time)."""
    row = {name: summary(t, work) for name, t in times.items()}
    for name, t in times.items():
        row[name]["ratio_to_plain"] = row[name]["per_s"] / row[base]["per_s"]
        row[name]["ratio_paired_median"] = statistics.median(b / v for b, v in zip(times[base], t))
        row[name]["ratio_best"] = min(times[base]) / min(t)
    return row


def summary(seconds: list[float], work: float) -> dict:
    median = statistics.median(seconds)
    return {"median_s": median, "min_s": min(seconds), "max_s": max(seconds), "reps": len(seconds),
            "per_s": work / median}


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / GiB


# --- the cases ---------------------------------------------------------------------------
def forward_fn(chat_model, inputs: dict, interventions=()) -> Callable[[], torch.Tensor]:
    from refusal_lens.interventions import intervene

    def run():
        with torch.no_grad(), intervene(chat_model, *interventions):
            return chat_model.model(**inputs, use_cache=False, logits_to_keep=1).logits
    return run


def generate_fn(chat_model, batch, max_new_tokens: int, interventions, counter: dict):
    """``generate_batch``'s call, on an already tokenized batch, counting the tokens made."""
    from refusal_lens.interventions import intervene

    def run():
        with torch.no_grad(), intervene(chat_model, *interventions):
            out = chat_model.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=chat_model.stop_token_ids, pad_token_id=chat_model.tokenizer.pad_token_id,
                temperature=None, top_p=None, top_k=None)
        counter["tokens"] = out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1])
        return out
    return run


def score_pairs_fn(chat_model, saes, inputs_for: Callable[[int], dict], feature_sets, chunk: int,
                   plain: bool = False, universe=None):
    """Refusal scores of pairs (row ``b`` = prompt ``b`` with ``feature_sets[b]`` ablated), ``chunk``
    rows a forward pass; the intervention is built inside the timed call, as a search builds it."""
    from refusal_lens.interventions import FeatureIntervention, intervene
    from refusal_lens.scoring import refusal_score_from_logits

    refusal_ids = chat_model.refusal_token_ids

    def run():
        scores = []
        for start in range(0, len(feature_sets), chunk):
            rows = feature_sets[start:start + chunk]
            inputs = inputs_for(len(rows))
            edits = [] if plain else [FeatureIntervention.for_rows(saes, rows, universe=universe)]
            with torch.no_grad(), intervene(chat_model, *edits):
                logits = chat_model.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
            scores.append(refusal_score_from_logits(logits, refusal_ids))
        return torch.cat(scores).cpu()  # one wait for the device, at the end: the host builds the
    return run                          # next chunk's intervention while the device runs this one


def random_features(n_layers: int, d_sae: int, per_layer: int, gen: torch.Generator) -> list[tuple[int, int]]:
    return [(L, int(i)) for L in range(n_layers) for i in torch.randperm(d_sae, generator=gen)[:per_layer]]


def search_sets(candidates: list[tuple[int, int]], n_rows: int, block: int, gen: torch.Generator):
    """What one greedy step asks of each row: the candidates minus that row's next block."""
    sets = []
    for _ in range(n_rows):
        drop = set(torch.randperm(len(candidates), generator=gen)[:block].tolist())
        sets.append([f for j, f in enumerate(candidates) if j not in drop])
    return sets


def profile_calls(fns: dict[str, Callable], device: torch.device, tables: list[str], tag: str) -> dict:
    """One profiled call of each function: device time, kernel count, wall time; the
    torch.profiler table (top 30 by device time) is appended to ``tables``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    result = {}
    for name, fn in fns.items():
        fn()
        synchronize(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            fn()
            synchronize(device)
            wall = time.perf_counter() - start
        events = prof.key_averages()
        on_device = [e for e in events if e.device_type == DeviceType.CUDA]
        result[name] = {"wall_ms": wall * 1e3,
                        "device_ms": sum(e.self_device_time_total for e in on_device) / 1e3,
                        "kernels": sum(e.count for e in on_device)}
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        tables.append(f"=== {tag} {name}: {result[name]}\n" + events.table(sort_by=sort, row_limit=30))
    return result


def build_rows_fn(saes, feature_sets, device: torch.device):
    """Build ``FeatureIntervention.for_rows`` and its per-layer slices on the device."""
    from refusal_lens.interventions import FeatureIntervention

    def run():
        intervention = FeatureIntervention.for_rows(saes, feature_sets)
        for layer in intervention.features:
            intervention.slice_for(layer, device)
    return run


class _SearchBudgetSpent(Exception):
    pass


def run_search(chat, saes, instructions, candidates, args, device, log) -> dict:
    """``greedy_minimal_sets`` as the pipeline runs it; stopped after ``--search-budget`` seconds.

    On random weights the accept/reject decisions are arbitrary, so the number of steps this
    run takes is one draw; the search can take from ``1 + blocks`` (every block dropped) to
    ``1 + 6 blocks`` (every block re-tested feature by feature) lock-steps, and the projection
    multiplies the measured time of a step by that bound.
    """
    from refusal_lens.pipeline.search import greedy_minimal_sets

    forwards = {"n": 0}
    counter = chat.model.register_forward_pre_hook(lambda *_: forwards.__setitem__("n", forwards["n"] + 1))
    marks = []
    started = time.perf_counter()

    def on_step(tracks):
        marks.append((time.perf_counter(), sum(len(t.prompts) for t in tracks if t.status == "running"),
                      forwards["n"]))
        if time.perf_counter() - started > args.search_budget:
            raise _SearchBudgetSpent

    finished = True
    try:
        outcome = greedy_minimal_sets(chat, saes, instructions, candidates, seeds=list(range(args.search_seeds)),
                                      rows_per_forward=args.search_chunk, on_step=on_step)
        tracks = outcome.tracks
    except _SearchBudgetSpent:
        finished, tracks = False, None
    finally:
        counter.remove()
    synchronize(device)
    wall = time.perf_counter() - started
    n_blocks = -(-len(candidates) // 5)
    most = 1 + 6 * n_blocks
    steps = len(marks)
    # step a (ablate all of C) and the prefix cache come before the first mark
    setup = marks[0][0] - started if marks else wall
    step_s = (marks[-1][0] - marks[0][0]) / (steps - 1) if steps > 1 else float("nan")
    out = {"prompts": len(instructions), "seeds": args.search_seeds, "candidates": len(candidates),
           "tracks": len(instructions) * args.search_seeds + args.search_seeds, "rows_per_forward": args.search_chunk,
           "finished": finished, "wall_s": wall, "lock_steps": steps + 1, "forward_passes": forwards["n"],
           "first_step_and_cache_s": setup, "step_s": step_s, "steps_most": most,
           "projected_s_most": setup + (most - 1) * step_s,
           "kind": "measured wall time of this run (random-weight decisions); projected worst case = "
                   "first step + (steps_most - 1) x measured step time"}
    if tracks is not None:
        out["track_status"] = {s: sum(t.status == s for t in tracks) for s in {t.status for t in tracks}}
        out["final_set_sizes"] = sorted(len(t.current) for t in tracks)[::max(1, len(tracks) // 10)]
    log(f"search: {'finished' if finished else 'stopped at the budget'} after {wall:.1f}s, {steps + 1} lock-steps, "
        f"{forwards['n']} forward passes; step {step_s:.3f}s; worst case {most} steps -> "
        f"{out['projected_s_most']:.0f}s projected")
    return out


class HookProbe:
    """An intervention whose hook does nothing (``noop``) or one element-wise op (``one_op``) at
    every layer: what a hook costs by itself, for the decode diagnostic."""

    def __init__(self, kind: str):
        self.kind = kind

    def attach(self, chat_model):
        from refusal_lens.hooks import add_output_edit

        edit = (lambda x: None) if self.kind == "noop" else (lambda x: x * 1.0)
        return [add_output_edit(block, edit) for block in chat_model.layers]

    def describe(self) -> dict:
        return {"type": self.kind}


def diagnostic_interventions(saes, features) -> dict:
    """The library's sparse edit (CUDA graphs for decode steps, the default) and eager, each also
    with the host time spent in its hook counted."""
    from refusal_lens.interventions import FeatureIntervention

    class Timed(FeatureIntervention):
        host_s, calls = 0.0, 0

        def _editor(self, layer):
            inner = super()._editor(layer)

            def run(x):
                start = time.perf_counter()
                out = inner(x)
                self.host_s += time.perf_counter() - start
                self.calls += 1
                return out
            return run

    out = {"sparse": FeatureIntervention(saes, features), "sparse_eager": FeatureIntervention(saes, features),
           "sparse_timed": Timed(saes, features), "sparse_eager_timed": Timed(saes, features)}
    out["sparse_eager"].use_cuda_graphs = out["sparse_eager_timed"].use_cuda_graphs = False
    return out


def decode_steps_fn(chat, batch: dict, n_steps: int, interventions, device, result: dict):
    """A greedy decode loop on the model's own cache: ``result['step_s']`` = seconds a step."""
    from refusal_lens.interventions import intervene

    def run():
        with torch.no_grad(), intervene(chat, *interventions):
            out = chat.model(**batch, use_cache=True, logits_to_keep=1)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            mask, pos = batch["attention_mask"], batch["position_ids"][:, -1:]
            ones = mask.new_ones(mask.shape[0], 1)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(n_steps):
                mask, pos = torch.cat([mask, ones], dim=1), pos + 1
                out = chat.model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            synchronize(device)
            result.setdefault("step_s", []).append((time.perf_counter() - start) / n_steps)
            result["last_logits"] = out.logits[:, -1].float()
    return run


def decode_diagnostic(chat, saes, features, inputs, args, device, log) -> dict:
    """Where generation's time goes: a decode step plain, with hooks that do nothing or one op,
    with the sparse edit replayed from CUDA graphs (the default) and eager, and the host time
    spent in the edit's hook; whether the graphs give the eager numbers; whether the edit makes
    the host wait for the device (CUDA sync debug mode)."""
    variants = {"plain": [], "noop_hooks": [HookProbe("noop")], "one_op_hooks": [HookProbe("one_op")]}
    edits = diagnostic_interventions(saes, features)
    variants.update({name: [iv] for name, iv in edits.items()})
    results: dict[str, dict] = {name: {} for name in variants}
    fns = {name: decode_steps_fn(chat, inputs, args.decode_steps, ivs, device, results[name])
           for name, ivs in variants.items()}
    out: dict = {"batch": int(inputs["input_ids"].shape[0]), "steps_a_call": args.decode_steps}
    interleaved(fns, reps=args.gen_reps, warmup=1, device=device)
    plain = statistics.median(results["plain"]["step_s"][1:])
    for name, r in results.items():
        step = statistics.median(r["step_s"][1:])  # the first call was the warm-up
        out[name] = {"step_ms": step * 1e3, "ratio_to_plain": plain / step,
                     "extra_us_per_layer": (step - plain) / chat.n_layers * 1e6}
    for name in ("sparse_timed", "sparse_eager_timed"):
        out[name]["host_us_per_edit_call"] = edits[name].host_s / max(edits[name].calls, 1) * 1e6
    a, b = results["sparse"]["last_logits"], results["sparse_eager"]["last_logits"]
    out["graphs_vs_eager_logits_max_abs_diff"] = float((a - b).abs().max())
    out["graphs_vs_eager_same_argmax"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    out["graphs_captured"] = sum(g not in (None, False) for g in edits["sparse"]._graphs.values())
    if device.type == "cuda":
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x = torch.randn(out["batch"], 1, chat.d_model, device=device, dtype=chat.dtype)
                for layer in edits["sparse"].features:
                    edit = edits["sparse"]._editor(layer)
                    for _ in range(3):  # eager, capture, replay
                        edit(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        out["syncs_in_edit"] = len(caught)
        out["sync_messages"] = sorted({str(w.message)[:200] for w in caught})[:5]
    log("decode diagnostic: " + ", ".join(f"{n} {out[n]['step_ms']:.1f} ms/step ({out[n]['extra_us_per_layer']:+.0f} us/layer)"
                                          for n in results) +
        f"; host time a call in the hook: graphs {out['sparse_timed']['host_us_per_edit_call']:.0f} us, "
        f"eager {out['sparse_eager_timed']['host_us_per_edit_call']:.0f} us; graphs vs eager logits "
        f"max diff {out['graphs_vs_eager_logits_max_abs_diff']:.2e}" +
        (f"; syncs in the edit: {out.get('syncs_in_edit')}" if "syncs_in_edit" in out else ""))
    return out


@torch.no_grad()
def accuracy_check(chat, saes, sparse, splice, inputs) -> dict:
    """The edit at one layer, sparse closed form and full splice (model dtype) against a float64
    computation of the closed form: error of the change each makes, relative to the change.
    End to end (last-position logits after editing every layer), the two are also compared,
    next to the size of the edit's own effect."""
    from refusal_lens.activations import residuals

    layer = saes.layers[len(saes.layers) // 2]
    x = residuals(chat, BatchEncoding(inputs), [layer])[layer]
    sae, idx = saes[layer], torch.tensor(sparse.features[layer], device=x.device)
    xd = x.double()
    pre = (xd - sae.b_dec.double() * sae.cfg.apply_b_dec_to_input) @ sae.W_enc.double()[:, idx] + sae.b_enc.double()[idx]
    acts = pre.relu() * (pre > sae.threshold.double()[idx])
    ref = -acts @ sae.W_dec.double()[idx]
    rel = lambda out: float(((out.double() - xd) - ref).norm() / ref.norm())  # noqa: E731
    out = {"layer_edit_sparse_rel_err": rel(sparse.edit(layer, x)), "layer_edit_splice_rel_err": rel(splice.edit(layer, x))}
    a = forward_fn(chat, inputs, [sparse])()[:, -1].float()
    b = forward_fn(chat, inputs, [splice])()[:, -1].float()
    c = forward_fn(chat, inputs)()[:, -1].float()
    out.update(end_to_end_sparse_vs_splice=float((a - b).norm() / b.norm()),
               end_to_end_edit_effect=float((c - b).norm() / b.norm()))
    return out


def run_shape(shape, args, device: torch.device, dtype: torch.dtype, out_dir: Path | None) -> dict:
    from benchmarks.saes import build_sae_set, mean_l0
    from benchmarks.shapes import build_model, instructions_of_length
    from refusal_lens.activations import model_inputs
    from refusal_lens.interventions import (DirectionalAblation, FeatureIntervention, SpliceFeatureIntervention)

    res: dict = {"shape": shape.name, "config": shape.config, "sae": shape.sae_label}
    tables: list[str] = []
    started = time.perf_counter()
    log = lambda msg: print(f"[{shape.name} {time.perf_counter() - started:5.0f}s] {msg}", flush=True)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    chat = build_model(shape, str(device), dtype)
    synchronize(device)
    res["attn_implementation"] = chat.model.config._attn_implementation
    res["build_model_s"] = time.perf_counter() - t0
    mem = {}
    if device.type == "cuda":
        mem["model_gib"] = torch.cuda.memory_allocated(device) / GiB
    log(f"model built in {res['build_model_s']:.1f}s ({res['attn_implementation']} attention)")

    T = args.tokens
    max_batch = max(args.batch_sizes)
    n_prompts = max(max_batch, args.search_prompts, *args.pair_chunks)
    prompts = instructions_of_length(chat, n_prompts, T)
    full = chat.tokenize(prompts)
    other = chat.tokenize(instructions_of_length(chat, 64, T, seed=1))  # SAE calibration
    res["prompt_tokens"] = int(full["input_ids"].shape[1])
    sub = {}

    def inputs_for(n: int) -> dict:
        if n not in sub:
            sub[n] = model_inputs(BatchEncoding({k: v[:n] for k, v in full.items()}))
        return sub[n]

    t0 = time.perf_counter()
    saes = build_sae_set(chat, shape.sae_width, other, target_l0=args.target_l0)
    synchronize(device)
    res["build_saes_s"] = time.perf_counter() - t0
    res["sae_l0"] = mean_l0(chat, saes, BatchEncoding({k: v[:64] for k, v in full.items()}))
    if device.type == "cuda":
        mem["model_and_saes_gib"] = torch.cuda.memory_allocated(device) / GiB
        mem["saes_gib"] = mem["model_and_saes_gib"] - mem["model_gib"]
    log(f"SAEs built in {res['build_saes_s']:.1f}s, mean L0 {res['sae_l0']:.1f} features a token")

    features = random_features(shape.n_layers, shape.sae_width, args.features_per_layer, gen)
    direction = torch.randn(shape.d_model, generator=gen)
    sparse = FeatureIntervention(saes, features)
    splice = SpliceFeatureIntervention(saes, features)

    res["check"] = accuracy_check(chat, saes, sparse, splice, inputs_for(min(8, n_prompts)))
    log("check: " + ", ".join(f"{k} {v:.2e}" for k, v in res["check"].items()))

    # --- forward ---------------------------------------------------------------------------
    res["forward"] = {}
    for B in args.batch_sizes:
        inputs = inputs_for(B)
        fns = {"plain": forward_fn(chat, inputs), "sparse": forward_fn(chat, inputs, [sparse]),
               "splice": forward_fn(chat, inputs, [splice]),
               "direction": forward_fn(chat, inputs, [DirectionalAblation(direction)])}
        times = interleaved(fns, reps=args.reps, warmup=args.warmup, device=device)
        row = ratios(times, B * inputs["input_ids"].shape[1])
        if device.type == "cuda" and B == max_batch:
            for name, fn in fns.items():
                mem[f"peak_forward_{name}_b{B}_gib"] = peak_memory(fn, device)
        res["forward"][str(B)] = row
        log(f"forward {B}x{T}: " + ", ".join(f"{n} {row[n]['per_s'] / 1e3:.1f}k tok/s ({row[n]['ratio_to_plain']:.2f}x)"
                                             for n in fns))
    if args.profile:
        B = min(args.batch_sizes)
        inputs = inputs_for(B)
        res["profile_forward"] = profile_calls(
            {"plain": forward_fn(chat, inputs), "sparse": forward_fn(chat, inputs, [sparse])},
            device, tables, f"{shape.name} forward b{B}")
        log(f"profile forward b{B}: {res['profile_forward']}")

    # --- generation ------------------------------------------------------------------------
    res["generate"] = {}
    for B in args.gen_batch_sizes:
        batch = BatchEncoding({k: v[:B] for k, v in full.items()})
        eager = FeatureIntervention(saes, features)
        eager.use_cuda_graphs = False
        counts = {"plain": {}, "sparse": {}, "sparse_eager": {}}
        fns = {"plain": generate_fn(chat, batch, args.new_tokens, [], counts["plain"]),
               "sparse": generate_fn(chat, batch, args.new_tokens, [sparse], counts["sparse"]),
               "sparse_eager": generate_fn(chat, batch, args.new_tokens, [eager], counts["sparse_eager"])}
        times = interleaved(fns, reps=args.gen_reps, warmup=1, device=device)
        assert len({c["tokens"] for c in counts.values()}) == 1, counts
        row = ratios(times, counts["plain"]["tokens"])
        for name in fns:
            row[name]["new_tokens"] = counts[name]["tokens"]
        row["sparse"]["cuda_graphs_captured"] = sum(g not in (None, False) for g in sparse._graphs.values())
        res["generate"][str(B)] = row
        log(f"generate {B} x {args.new_tokens} new: plain {row['plain']['per_s']:.0f} tok/s, "
            f"sparse {row['sparse']['per_s']:.0f} tok/s ({row['sparse']['ratio_to_plain']:.2f}x), "
            f"without CUDA graphs {row['sparse_eager']['per_s']:.0f} tok/s ({row['sparse_eager']['ratio_to_plain']:.2f}x)")
    if args.profile:
        B = min(args.gen_batch_sizes)
        batch = BatchEncoding({k: v[:B] for k, v in full.items()})
        res["profile_generate"] = profile_calls(
            {"plain": generate_fn(chat, batch, 8, [], {}), "sparse": generate_fn(chat, batch, 8, [sparse], {})},
            device, tables, f"{shape.name} generate b{B} x 8 new")
        log(f"profile generate b{B}: {res['profile_generate']}")

    if args.profile:
        B = min(args.gen_batch_sizes)
        res["decode_diagnostic"] = decode_diagnostic(chat, saes, features, inputs_for(B), args, device, log)

    # --- many (prompt, feature set) pairs ------------------------------------------------------
    # candidates as METHOD.md §4.1 makes them: the top K of every layer, K = 200 / n_layers
    per_layer = -(-args.candidates // shape.n_layers)
    candidates = random_features(shape.n_layers, shape.sae_width, per_layer, gen)[:args.candidates]
    sets = search_sets(candidates, args.pairs, 5, gen)
    res["pairs"] = {}
    for chunk in args.pair_chunks:
        fns = {"plain": score_pairs_fn(chat, saes, inputs_for, sets, chunk, plain=True),
               "pairs": score_pairs_fn(chat, saes, inputs_for, sets, chunk),
               "pairs_universe": score_pairs_fn(chat, saes, inputs_for, sets, chunk, universe=candidates)}
        times = interleaved(fns, reps=args.pair_reps, warmup=args.warmup, device=device)
        row = ratios(times, len(sets))
        # the part of it that builds the per-row intervention and its slices on the device
        from refusal_lens.saes.slices import clear_slice_cache

        def build():
            clear_slice_cache()  # a new feature set each time: no cache hits
            build_rows_fn(saes, sets[:chunk], device)()
        build_s = interleaved({"build": build}, reps=args.pair_reps, warmup=1, device=device)["build"]
        row.update(n_pairs=len(sets), chunk=chunk, candidates=len(candidates),
                   features_per_set=len(sets[0]), build_s_per_forward=statistics.median(build_s))
        res["pairs"][str(chunk)] = row
        log(f"pairs, {chunk} a forward: {row['pairs']['per_s']:.0f} pairs/s vs plain-forward bound "
            f"{row['plain']['per_s']:.0f} ({row['pairs']['ratio_to_plain']:.2f}x; with universe= "
            f"{row['pairs_universe']['ratio_to_plain']:.2f}x); {len(sets)} pairs of {len(sets[0])} features; "
            f"building an intervention without cache hits {row['build_s_per_forward'] * 1e3:.1f} ms")

    # --- the greedy search (refusal_lens.pipeline.search), Gemma shape -----------------------------
    if shape.family == "gemma2" and not args.skip_search:
        res["search"] = run_search(chat, saes, prompts[:args.search_prompts], candidates, args, device, log)
    res["memory"] = mem
    if tables and out_dir is not None:
        (out_dir / f"profile_{shape.name}.txt").write_text("\n\n".join(tables))
    del saes, sparse, splice, chat
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# --- report --------------------------------------------------------------------------------
def table(results: dict) -> str:
    lines = [f"{'shape':<11} {'case':<40} {'plain':>15} {'edited':>15} {'ratio':>11}  target",
             f"{'':<11} {'':<40} {'':>15} {'':>15} {'med (best)':>11}"]

    def add(shape, case, plain, edited, ratio, target, best=None):
        ratio = ratio if best is None else f"{ratio} ({best:.2f})"
        lines.append(f"{shape:<11} {case:<40} {plain:>15} {edited:>15} {ratio:>11}  {target}")

    for r in results["shapes"]:
        s = r["shape"]
        n_layers = r["config"]["num_hidden_layers"]
        for B, row in r["forward"].items():
            T = r["prompt_tokens"]
            ok = "met" if row["sparse"]["ratio_to_plain"] >= 0.9 else "MISSED"
            add(s, f"forward {B}x{T}, 50 feats x {n_layers} layers", f"{row['plain']['per_s'] / 1e3:.1f}k tok/s",
                f"{row['sparse']['per_s'] / 1e3:.1f}k tok/s", f"{row['sparse']['ratio_to_plain']:.2f}", f">=0.90 {ok}",
                row["sparse"].get("ratio_best"))
            add(s, f"forward {B}x{T}, full splice (reference)", "", f"{row['splice']['per_s'] / 1e3:.1f}k tok/s",
                f"{row['splice']['ratio_to_plain']:.2f}", "")
            add(s, f"forward {B}x{T}, directional ablation", "", f"{row['direction']['per_s'] / 1e3:.1f}k tok/s",
                f"{row['direction']['ratio_to_plain']:.2f}", "")
        for B, row in r["generate"].items():
            ok = "met" if row["sparse"]["ratio_to_plain"] >= 0.85 else "MISSED"
            add(s, f"greedy generation, batch {B}", f"{row['plain']['per_s']:.0f} tok/s",
                f"{row['sparse']['per_s']:.0f} tok/s", f"{row['sparse']['ratio_to_plain']:.2f}", f">=0.85 {ok}",
                row["sparse"].get("ratio_best"))
            add(s, "  same, without CUDA graphs", "", f"{row['sparse_eager']['per_s']:.0f} tok/s",
                f"{row['sparse_eager']['ratio_to_plain']:.2f}", "", row["sparse_eager"].get("ratio_best"))
        for chunk, p in r["pairs"].items():
            add(s, f"refusal score, {p['n_pairs']} pairs ({chunk}/fwd)", f"{p['plain']['per_s']:.0f} /s",
                f"{p['pairs']['per_s']:.0f} pairs/s", f"{p['pairs']['ratio_to_plain']:.2f}", "(report)",
                p["pairs"].get("ratio_best"))
            add(s, "  same, for_rows(universe=candidates)", "",
                f"{p['pairs_universe']['per_s']:.0f} pairs/s", f"{p['pairs_universe']['ratio_to_plain']:.2f}", "")
        if "search" in r:
            q = r["search"]
            measured = f"{q['wall_s'] / 60:.1f} min" + ("" if q["finished"] else " (cut)")
            add(s, f"search {q['prompts']}p x {q['seeds']} seeds, {q['candidates']} cand.",
                f"{q['lock_steps']} steps", measured, "",
                f"<10 min; worst case {q['projected_s_most'] / 60:.1f} min projected")
        m = r["memory"]
        if m:
            peak = max(v for k, v in m.items() if k.startswith("peak_forward") and v is not None)
            add(s, "GPU memory: model / + SAEs / peak fwd", f"{m['model_gib']:.1f} GiB",
                f"{m['model_and_saes_gib']:.1f} / {peak:.1f} GiB", "", "(report)")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    import transformers

    from benchmarks.saes import sae_backend

    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "sae_backend": sae_backend(),
           "device": str(device), "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / GiB, cuda=torch.version.cuda,
                   sm_count=props.multi_processor_count)
    return env


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gemma2-2b,llama31-8b")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of plain vs edited runs")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--sae-backend", choices=("auto", "sae_lens", "shim"), default="auto")
    p.add_argument("--tokens", type=int, default=64, help="prompt length")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--gen-batch-sizes", default="32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=32, help="decode diagnostic (--profile): steps a call")
    p.add_argument("--features-per-layer", type=int, default=50)
    p.add_argument("--target-l0", type=float, default=64)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--pair-chunks", default="64,256", help="rows a forward pass in the pairs case")
    p.add_argument("--search-prompts", type=int, default=100)
    p.add_argument("--search-seeds", type=int, default=3)
    p.add_argument("--search-chunk", type=int, default=64, help="rows_per_forward (the pipeline's default: 64)")
    p.add_argument("--search-budget", type=float, default=300, help="seconds before the search is cut")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--gen-reps", type=int, default=None)
    p.add_argument("--pair-reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for the JSON (default: $OUT if set)")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.gen_batch_sizes = [int(b) for b in args.gen_batch_sizes.split(",")]
    args.pair_chunks = [int(b) for b in args.pair_chunks.split(",")]
    if args.quick:
        args.batch_sizes = args.batch_sizes[:1]
        args.pair_chunks = args.pair_chunks[:1]
        args.pairs = min(args.pairs, 2 * args.pair_chunks[0])
    args.reps = args.reps or (3 if args.quick else 20)
    args.gen_reps = args.gen_reps or (2 if args.quick else 9)
    args.pair_reps = args.pair_reps or (2 if args.quick else 10)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    choose_sae_backend(args.sae_backend)
    from benchmarks.shapes import SHAPES

    os.environ.setdefault("REFUSAL_LENS_PROGRESS", "0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    out = args.out or os.environ.get("OUT")
    out_dir = Path(out) if out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(device), "dtype": str(dtype).removeprefix("torch."),
               "args": {k: v for k, v in vars(args).items()}, "shapes": []}
    print(json.dumps(results["environment"]), flush=True)
    for name in args.shapes.split(","):
        results["shapes"].append(run_shape(SHAPES[name], args, device, dtype, out_dir))
        if out_dir is not None:  # after each shape, so a run cut short keeps what it measured
            (out_dir / "benchmarks.json").write_text(json.dumps(results, indent=1))
    print(table(results), flush=True)
    return results


if __name__ == "__main__":
    main()
