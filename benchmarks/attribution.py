#!/usr/bin/env python
"""Speed of attribution over SAE features (issue 22): per-layer IG, attribution patching, and a
dense per-layer IG, side by side on real model shapes.

    python benchmarks/attribution.py [--shapes gemma2-2b,llama31-8b] [--prompts 100] [--steps 10]

Builds each shape from its config (random weights, bf16 on a GPU) with a JumpReLU SAE at every
layer, as ``benchmarks/run.py`` does, and times, in one process, over every layer:

  ig      ``refusal_lens.attribution.attribute(method="ig")``: per-layer integrated gradients,
          the gradient with respect to the residual only, projected onto the decoder rows of
          the features that changed (the library, as shipped: defaults but the batch size)
  dense   the same per-layer IG written as sparse-feature-circuit code writes it
          (``dense_integrated_gradients`` below): the whole SAE spliced in at layer L, the
          full-width feature tensor and the error term interpolated and ``requires_grad``,
          α steps as rows of one batch, the full model run from the input; weights frozen
  atp     ``attribute(method="atp")``: the gradient at the clean point at every layer from one
          backward pass
  bound   attribution patching's lower bound on the same rows: one plain forward (no grad)
          plus one plain forward-backward (gradient at the embedding output, weights frozen),
          as transformers runs them (``bound``) and with the output head reading a contiguous
          input (``bound_head``: ``contiguous_head_input``, which the library's passes use; the
          plain call re-reads the head weight once per row, see that function)

Each method runs once over all prompts and layers after a warm-up (the IG runs are long:
one call each); ``atp`` and the bounds alternate for ``--reps`` rounds, medians reported.
Peak GPU memory of each call is read too. The dense and the library IG results are
compared entry by entry. ``--ig-core`` also times the library's gradient step alone
(``integrated_gradient`` at every layer) on one batch, to show what the rest costs.
``--profile`` adds torch.profiler tables (``$OUT/profile_attribution_<shape>.txt``) and times the
library's ``decompose`` against its first, gather-based version on the same data.
The table comes last; the JSON goes to ``$OUT/attribution.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "src", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch

from benchmarks.run import GiB, choose_sae_backend, environment, synchronize


# --- the dense reference implementation ----------------------------------------------------------
@dataclass
class DenseLayer:
    """One layer's dense-IG result, in the library's ``LayerAttribution`` layout."""

    prompt: torch.Tensor       # [n]
    position: torch.Tensor     # [n] from the right, -1 = last prompt token
    feature: torch.Tensor      # [n]
    attribution: torch.Tensor  # [n]
    error: torch.Tensor        # [prompts, width]


def dense_integrated_gradients(chat_model, saes, instructions: Sequence[str], direction: torch.Tensor, *,
                               layers: Sequence[int] | None = None, steps: int = 10, batch_size: int = 8,
                               refusal_token: int | None = None) -> dict[int, DenseLayer]:
    """Per-layer IG the dense way (Marks et al.'s ``_pe_ig``): for each layer, the SAE's
    full-width features ``f`` and error ``e`` of clean and patched runs, interpolated at
    ``α = k/steps`` (all steps as rows of one batch), spliced in as ``decode(f) + e``, the
    whole model run from the input, and ``∂m/∂f``, ``∂m/∂e`` read off the dense leaves."""
    from refusal_lens.activations import model_inputs
    from refusal_lens.attribution import interpolation_points, jailbreak_tokens, metric_from_logits
    from refusal_lens.attribution.gradients import weights_frozen
    from refusal_lens.attribution.metric import contiguous_head_input, forward_capturing
    from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
    from refusal_lens.interventions import DirectionalAblation

    layers = list(saes.layers if layers is None else layers)
    refusal = chat_model.refusal_token_ids[0] if refusal_token is None else int(refusal_token)
    ablation = DirectionalAblation(direction)
    alphas = interpolation_points(steps)
    parts: dict[int, list[tuple]] = {L: [] for L in layers}
    errors: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    first = 0
    for start in range(0, len(instructions), batch_size):
        batch = chat_model.tokenize(list(instructions[start:start + batch_size]))
        mask = batch["attention_mask"]
        rows, width = mask.shape
        with torch.no_grad():
            patched, patched_logits = forward_capturing(chat_model, batch, layers, [ablation])
            clean, _ = forward_capturing(chat_model, batch, layers)
        jailbreak = jailbreak_tokens(patched_logits, {*chat_model.refusal_token_ids, refusal})
        repeated = {k: v.repeat_interleave(steps, 0) for k, v in model_inputs(batch).items()}
        real = mask.bool()
        for L in layers:
            sae = saes[L]
            with torch.no_grad():
                f_clean, f_patched = sae.encode(clean[L]), sae.encode(patched[L])
                e_clean, e_patched = clean[L] - sae.decode(f_clean), patched[L] - sae.decode(f_patched)
                a = alphas.to(f_clean.device, f_clean.dtype)[None, :, None, None]
                f = (f_clean[:, None] + a * (f_patched - f_clean)[:, None]).flatten(0, 1)
                e = (e_clean[:, None] + a.to(e_clean.dtype) * (e_patched - e_clean)[:, None]).flatten(0, 1)
            f.requires_grad_(True)
            e.requires_grad_(True)
            handles = []
            with (weights_frozen(chat_model.model), torch.enable_grad(), hooks_removed_on_exit(handles),
                  contiguous_head_input(chat_model)):  # the library's head fix, so only the method differs
                handles.append(add_output_edit(chat_model.layers[L], lambda _h, sae=sae, f=f, e=e: sae.decode(f) + e))
                logits = chat_model.model(**repeated, use_cache=False, logits_to_keep=1).logits[:, -1]
                metric = metric_from_logits(logits, jailbreak.repeat_interleave(steps, 0), refusal)
            grad_f, grad_e = torch.autograd.grad(metric.sum(), [f, e])
            work = torch.promote_types(f_clean.dtype, torch.float32)
            with torch.no_grad():
                grad_f = grad_f.to(work).view(rows, steps, width, -1).mean(1)
                grad_e = grad_e.to(work).view(rows, steps, width, -1).mean(1)
                delta = f_patched.to(work) - f_clean.to(work)
                prompt, column, feature = (delta.ne(0) & real[..., None]).nonzero(as_tuple=True)
                attribution = delta[prompt, column, feature] * grad_f[prompt, column, feature]
                error = ((e_patched.to(work) - e_clean.to(work)) * grad_e).sum(-1) * real
            parts[L].append(((prompt + first).cpu(), (column - width).cpu(), feature.cpu(), attribution.cpu()))
            errors[L].append(error.cpu())
            del f, e, grad_f, grad_e, delta, f_clean, f_patched, e_clean, e_patched
        first += rows
    width = max(e.shape[1] for L in layers for e in errors[L])
    return {L: DenseLayer(*(torch.cat(column) for column in zip(*parts[L])),
                          torch.cat([torch.nn.functional.pad(e, (width - e.shape[1], 0)) for e in errors[L]]))
            for L in layers}


def compare(result, dense: dict[int, DenseLayer], d_sae: dict[int, int]) -> dict:
    """The library's IG against the dense one: same (prompt, position, feature) entries? and
    ``|ours - dense| / |dense|`` over the attributions and over the error shares, per layer
    and worst over layers."""
    per_layer = {}
    for L, ref in dense.items():
        ours = result.layers[L]
        width = max(ours.error.shape[1], ref.error.shape[1])

        def keys(e, width=width, d_sae=d_sae[L]):
            return (e.prompt.long() * width + (e.position.long() + width)) * d_sae + e.feature.long()

        k_ours, k_ref = keys(ours), keys(ref)
        order_ours, order_ref = k_ours.argsort(), k_ref.argsort()
        k_ours, k_ref = k_ours[order_ours], k_ref[order_ref]
        in_ref = torch.isin(k_ours, k_ref)
        in_ours = torch.isin(k_ref, k_ours)
        a = ours.attribution[order_ours][in_ref].double()  # both sorted by key: matched entries align
        b = ref.attribution[order_ref][in_ours].double()
        err_ours = torch.nn.functional.pad(ours.error, (width - ours.error.shape[1], 0)).double()
        err_ref = torch.nn.functional.pad(ref.error, (width - ref.error.shape[1], 0)).double()
        unmatched = ref.attribution[order_ref][~in_ours].double()
        per_layer[L] = {
            "entries_ours": len(k_ours), "entries_dense": len(k_ref),
            "entries_only_ours": int((~in_ref).sum()), "entries_only_dense": int((~in_ours).sum()),
            "attribution_rel_err": float((a - b).norm() / b.norm().clamp_min(1e-30)),
            "unmatched_share_of_dense_norm": float(unmatched.norm() / ref.attribution.double().norm().clamp_min(1e-30)),
            "error_rel_err": float((err_ours - err_ref).norm() / err_ref.norm().clamp_min(1e-30)),
            "total_rel_err": float((_totals(ours.prompt, ours.attribution, err_ours)
                                    - _totals(ref.prompt, ref.attribution, err_ref)).norm()
                                   / _totals(ref.prompt, ref.attribution, err_ref).norm().clamp_min(1e-30)),
        }
    worst = {k: max(v[k] for v in per_layer.values()) for k in next(iter(per_layer.values()))
             if k.endswith("rel_err") or k.startswith("unmatched")}
    return {"worst": worst, "per_layer": {str(L): v for L, v in per_layer.items()}}


def _totals(prompt: torch.Tensor, attribution: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Per prompt: the features' attributions plus the error shares (the IG estimate of the layer's effect)."""
    return torch.zeros(error.shape[0], dtype=torch.float64).index_add_(0, prompt, attribution.double()) + error.sum(1)


# --- the library's decomposition before this benchmark (for --profile's before/after) ----------------
@torch.no_grad()
def gather_decompose(sae, clean: torch.Tensor, patched: torch.Tensor, grad: torch.Tensor):
    """``decompose`` as first written: ``d_i · ḡ`` by gathering each changed entry's decoder row
    and gradient row (float32) and summing their product. Kept here to time against the
    library's product form on the same data."""
    from refusal_lens.attribution.decomposition import LayerChanges

    work, chunk_elements = grad.dtype, 1 << 25
    tokens, features, deltas = [], [], []
    chunk = max(1, chunk_elements // sae.cfg.d_sae)
    for start in range(0, clean.shape[0], chunk):
        delta = sae.encode(patched[start:start + chunk]) - sae.encode(clean[start:start + chunk])
        token, feature = delta.nonzero(as_tuple=True)
        tokens.append(token + start)
        features.append(feature)
        deltas.append(delta[token, feature])
    token, feature, delta = torch.cat(tokens), torch.cat(features), torch.cat(deltas).to(work)
    projected = torch.empty_like(delta)
    chunk = max(1, chunk_elements // grad.shape[-1])
    for start in range(0, len(token), chunk):
        stop = start + chunk
        rows = sae.W_dec.detach().index_select(0, feature[start:stop]).to(work)
        projected[start:stop] = (rows * grad.index_select(0, token[start:stop])).sum(-1)
    attribution = delta * projected
    total = ((patched.to(work) - clean.to(work)) * grad).sum(-1)
    error = total - torch.zeros_like(total).index_add_(0, token, attribution)
    return LayerChanges(token, feature, delta, attribution, error)


def decompose_diagnostic(chat, saes, layers, batch, direction, device, reps: int = 3) -> dict:
    """On attribution patching's data (one batch, every layer): seconds of the library's
    ``decompose`` and of ``gather_decompose`` over all layers (median of ``reps``), and how far
    apart their attributions are where both found the entry (in bf16 the library's fused
    JumpReLU encode can round a feature across its threshold that sae_lens's does not)."""
    from refusal_lens.attribution import jailbreak_tokens
    from refusal_lens.attribution.decomposition import decompose
    from refusal_lens.attribution.gradients import clean_point_gradients
    from refusal_lens.attribution.metric import forward_capturing
    from refusal_lens.interventions import DirectionalAblation

    with torch.no_grad():
        patched, logits = forward_capturing(chat, batch, layers, [DirectionalAblation(direction)])
    tokens = jailbreak_tokens(logits, chat.refusal_token_ids)
    clean, grads, _ = clean_point_gradients(chat, batch, layers, tokens, chat.refusal_token_ids[0])
    real = batch["attention_mask"].bool()
    data = {L: (clean[L][real], patched[L][real], grads[L][real]) for L in layers}
    del clean, patched, grads
    out = {}
    for name, fn in (("product", decompose), ("gather", gather_decompose)):
        seconds = []
        for _ in range(reps):
            synchronize(device)
            start = time.perf_counter()
            results = [fn(saes[L], *data[L]) for L in layers]
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        out[f"{name}_s"] = statistics.median(seconds)
        out[f"{name}_entries"] = {  # (layer, token, feature) key -> attribution, sorted by key
            "key": torch.cat([(i * len(data[L][0]) + r.token) * saes[L].cfg.d_sae + r.feature
                              for i, (L, r) in enumerate(zip(layers, results))]).cpu(),
            "value": torch.cat([r.attribution for r in results]).double().cpu()}
    (k_a, v_a), (k_b, v_b) = ((e["key"], e["value"]) for e in (out.pop("product_entries"), out.pop("gather_entries")))
    order_a, order_b = k_a.argsort(), k_b.argsort()
    k_a, v_a, k_b, v_b = k_a[order_a], v_a[order_a], k_b[order_b], v_b[order_b]
    in_b, in_a = torch.isin(k_a, k_b), torch.isin(k_b, k_a)
    out["product_vs_gather_rel_err"] = float((v_a[in_b] - v_b[in_a]).norm() / v_b[in_a].norm())
    out["entries"], out["entries_only_product"], out["entries_only_gather"] = len(k_a), int((~in_b).sum()), int((~in_a).sum())
    return out


def profile_tables(fns: dict[str, Callable[[], object]], device: torch.device) -> str:
    """torch.profiler: one call of each function, the 25 costliest ops by device (or host) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tables = []
    for name, fn in fns.items():
        synchronize(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            fn()
            synchronize(device)
            wall = time.perf_counter() - start
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        tables.append(f"=== {name}: wall {wall * 1e3:.1f} ms\n" + prof.key_averages().table(sort_by=sort, row_limit=25))
    return "\n\n".join(tables)


# --- attribution patching's lower bound -------------------------------------------------------------
def head_mode(chat_model, head_fix: bool):
    from contextlib import nullcontext

    from refusal_lens.attribution.metric import contiguous_head_input

    return contiguous_head_input(chat_model) if head_fix else nullcontext()


def plain_forward(chat_model, inputs: dict, head_fix: bool = False) -> Callable[[], torch.Tensor]:
    def run():
        with torch.no_grad(), head_mode(chat_model, head_fix):
            return chat_model.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
    return run


def plain_forward_backward(chat_model, inputs: dict, target: torch.Tensor, other: int,
                           head_fix: bool = False) -> Callable[[], torch.Tensor]:
    """One forward and one backward: ``∂(logit[target] - logit[other])/∂(embedding output)``,
    no weight gradients: the least work that yields a gradient at every layer."""
    from refusal_lens.attribution import metric_from_logits
    from refusal_lens.attribution.gradients import weights_frozen
    from refusal_lens.hooks import hooks_removed_on_exit

    def run():
        leaves = []

        def as_leaf(_module, _args, output):
            leaves.append(output.detach().requires_grad_(True))
            return leaves[-1]

        handles = []
        with (weights_frozen(chat_model.model), torch.enable_grad(), hooks_removed_on_exit(handles),
              head_mode(chat_model, head_fix)):
            handles.append(chat_model.model.get_input_embeddings().register_forward_hook(as_leaf))
            logits = chat_model.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
            metric = metric_from_logits(logits, target, other)
        (grad,) = torch.autograd.grad(metric.sum(), leaves)
        return grad
    return run


# --- timing -----------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object, float | None, float | None]:
    """``(seconds, result, peak GiB, peak GiB above what was allocated before)`` of one call."""
    gc.collect()
    synchronize(device)
    before = None
    if device.type == "cuda":  # the allocator's cache is kept, as in repeated use
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        if collecting:
            gc.enable()
    if device.type != "cuda":
        return seconds, out, None, None
    peak = torch.cuda.max_memory_allocated(device)
    return seconds, out, peak / GiB, (peak - before) / GiB


def run_shape(shape, args, device: torch.device, dtype: torch.dtype, out_dir: Path | None) -> dict:
    from transformers import BatchEncoding

    from benchmarks.saes import build_sae_set, mean_l0
    from benchmarks.shapes import build_model, instructions_of_length
    from refusal_lens.activations import model_inputs
    from refusal_lens.attribution import attribute, jailbreak_tokens
    from refusal_lens.attribution.gradients import integrated_gradient
    from refusal_lens.attribution.metric import forward_capturing
    from refusal_lens.interventions import DirectionalAblation

    res: dict = {"shape": shape.name, "config": shape.config, "sae": shape.sae_label, "prompts": args.prompts,
                 "steps": args.steps, "ig_batch_prompts": args.ig_batch, "atp_batch_prompts": args.atp_batch}
    started = time.perf_counter()
    log = lambda msg: print(f"[{shape.name} {time.perf_counter() - started:5.0f}s] {msg}", flush=True)
    chat = build_model(shape, str(device), dtype)
    synchronize(device)
    res["attn_implementation"] = chat.model.config._attn_implementation
    mem = {}
    if device.type == "cuda":
        mem["model_gib"] = torch.cuda.memory_allocated(device) / GiB
    prompts = instructions_of_length(chat, args.prompts, args.tokens)
    full = chat.tokenize(prompts)
    res["prompt_tokens"] = int(full["input_ids"].shape[1])
    calibration = chat.tokenize(instructions_of_length(chat, 64, args.tokens, seed=1))
    saes = build_sae_set(chat, shape.sae_width, calibration, target_l0=args.target_l0)
    res["sae_l0"] = mean_l0(chat, saes, BatchEncoding({k: v[:32] for k, v in full.items()}))
    if device.type == "cuda":
        mem["model_and_saes_gib"] = torch.cuda.memory_allocated(device) / GiB
    layers = saes.layers if args.layers is None else args.layers
    res["layers"] = list(layers)
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(shape.d_model, generator=gen)
    log(f"model and {len(saes.layers)} SAEs built ({res['attn_implementation']}), L0 {res['sae_l0']:.0f}, "
        f"{len(prompts)} prompts x {res['prompt_tokens']} tokens")

    def ig():
        return attribute(chat, saes, prompts, direction, layers=layers, steps=args.steps, batch_size=args.ig_batch)

    def dense():
        return dense_integrated_gradients(chat, saes, prompts, direction, layers=layers, steps=args.steps,
                                          batch_size=args.ig_batch)

    def atp():
        return attribute(chat, saes, prompts, direction, layers=layers, method="atp", batch_size=args.atp_batch)

    # the lower bound runs on the same batches as atp, with atp's targets
    atp_inputs = [model_inputs(BatchEncoding({k: v[i:i + args.atp_batch] for k, v in full.items()}))
                  for i in range(0, len(prompts), args.atp_batch)]
    refusal = chat.refusal_token_ids[0]
    with torch.no_grad():
        targets = [jailbreak_tokens(plain_forward(chat, x)(), [refusal]) for x in atp_inputs]
    def bound_fn(head_fix: bool):
        forwards = [plain_forward(chat, x, head_fix) for x in atp_inputs]
        backwards = [plain_forward_backward(chat, x, t, refusal, head_fix) for x, t in zip(atp_inputs, targets)]

        def run():
            return [fwd() for fwd in forwards] + [bwd() for bwd in backwards]
        return run

    bound, bound_head = bound_fn(False), bound_fn(True)

    # warm-up: every code path once, on one batch and two layers
    few, two = prompts[:args.ig_batch], [layers[0], layers[-1]]
    attribute(chat, saes, few, direction, layers=two, steps=args.steps, batch_size=args.ig_batch)
    dense_integrated_gradients(chat, saes, few, direction, layers=two, steps=args.steps, batch_size=args.ig_batch)
    atp()
    bound()
    bound_head()
    synchronize(device)
    log("warm-up done")

    times: dict[str, list[float]] = {"ig": [], "dense": [], "atp": [], "bound": [], "bound_head": []}
    for name, fn in (("ig", ig), ("dense", dense)):
        if name == "dense" and args.skip_dense:
            continue
        seconds, out, peak, above = timed(fn, device)
        times[name].append(seconds)
        mem[f"peak_{name}_gib"], mem[f"peak_{name}_above_model_and_saes_gib"] = peak, above
        res[f"{name}_result"] = out
        log(f"{name}: {seconds:.1f}s" + (f", peak {peak:.1f} GiB" if peak is not None else ""))
    for _ in range(args.reps):
        for name, fn in (("atp", atp), ("bound", bound), ("bound_head", bound_head)):
            seconds, out, peak, above = timed(fn, device)
            times[name].append(seconds)
            mem[f"peak_{name}_gib"], mem[f"peak_{name}_above_model_and_saes_gib"] = peak, above
    log(f"atp {statistics.median(times['atp']):.3f}s, bound {statistics.median(times['bound']):.3f}s, "
        f"bound_head {statistics.median(times['bound_head']):.3f}s (medians of {args.reps})")

    ig_result = res.pop("ig_result")
    dense_result = res.pop("dense_result", None)
    res["entries_per_layer"] = statistics.mean(len(ig_result.layers[L].feature) for L in layers)
    if dense_result is not None:
        res["agreement"] = compare(ig_result, dense_result, {L: saes[L].cfg.d_sae for L in layers})
        log(f"dense vs ours, worst layer: {res['agreement']['worst']}")
    res.pop("atp_result", None)
    res.pop("bound_result", None)

    if args.ig_core:  # the gradient step alone, every layer, one batch, as attribute runs it
        batch = chat.tokenize(prompts[:args.ig_batch])
        with torch.no_grad():
            patched, logits = forward_capturing(chat, batch, layers, [DirectionalAblation(direction)])
            clean, _ = forward_capturing(chat, batch, layers)
        tokens = jailbreak_tokens(logits, chat.refusal_token_ids)
        mask = batch["attention_mask"]

        def core():
            for L in layers:
                integrated_gradient(chat, L, clean[L], patched[L], mask, tokens, refusal, args.steps)
        core()
        seconds, _, _, _ = timed(core, device)
        n_batches = -(-len(prompts) // args.ig_batch)
        res["ig_core"] = {"one_batch_s": seconds, "batches": n_batches, "projected_s": seconds * n_batches}
        log(f"ig core (integrated_gradient alone), one batch: {seconds:.2f}s, x{n_batches} = "
            f"{seconds * n_batches:.1f}s")

    if args.profile:
        first = BatchEncoding({k: v[:args.atp_batch] for k, v in full.items()})
        res["decompose"] = decompose_diagnostic(chat, saes, layers, first, direction, device)
        log(f"decompose, every layer, {args.atp_batch} prompts: {res['decompose']}")
        few = prompts[:args.ig_batch]
        text = profile_tables({
            "atp": atp,
            "ig, one batch": lambda: attribute(chat, saes, few, direction, layers=layers, steps=args.steps,
                                               batch_size=args.ig_batch),
            "bound": bound, "bound_head": bound_head}, device)
        if out_dir is not None:
            (out_dir / f"profile_attribution_{shape.name}.txt").write_text(text)

    res["times_s"] = times
    res["median_s"] = {k: statistics.median(v) for k, v in times.items() if v}
    res["memory"] = mem
    return res


# --- report -----------------------------------------------------------------------------------------
def goals(r: dict) -> dict:
    m = r["median_s"]
    out = {"atp_over_bound": m["atp"] / m["bound"], "atp_over_bound_head": m["atp"] / m["bound_head"]}
    if "dense" in m:
        out["dense_over_ig"] = m["dense"] / m["ig"]
    return out


def table(results: dict) -> str:
    lines = [f"{'shape':<11} {'case':<44} {'time':>9} {'peak GiB':>10}  goal"]
    for r in results["shapes"]:
        s, m, mem, g = r["shape"], r["median_s"], r["memory"], goals(r)
        n = f"{r['prompts']}x{r['prompt_tokens']}, {len(r['layers'])} layers"

        def peak(name, mem=mem):
            value = mem.get(f"peak_{name}_gib")
            return "" if value is None else f"{value:.1f}"
        gemma = r["config"].get("hidden_size") == 2304
        ig_goal = ("<= 120 s " + ("met" if m["ig"] <= 120 else "MISSED")) if gemma else "(report)"
        lines.append(f"{s:<11} {'per-layer IG, ' + str(r['steps']) + ' steps, ' + n:<44} {m['ig']:>8.1f}s "
                     f"{peak('ig'):>10}  {ig_goal}")
        if "dense" in m:
            ok = "met" if g["dense_over_ig"] >= 5 else "MISSED"
            lines.append(f"{s:<11} {'dense per-layer IG, same':<44} {m['dense']:>8.1f}s {peak('dense'):>10}  "
                         f"dense/ours {g['dense_over_ig']:.2f}x (>= 5 {ok})")
        ok = "met" if g["atp_over_bound"] <= 1.25 else "MISSED"
        ok_head = "met" if g["atp_over_bound_head"] <= 1.25 else "MISSED"
        lines.append(f"{s:<11} {'attribution patching, ' + n:<44} {m['atp']:>8.3f}s {peak('atp'):>10}  "
                     f"atp/bound {g['atp_over_bound']:.2f}x (<= 1.25 {ok}); "
                     f"atp/bound_head {g['atp_over_bound_head']:.2f}x ({ok_head})")
        lines.append(f"{s:<11} {'  bound: plain fwd + plain fwd-bwd':<44} {m['bound']:>8.3f}s {peak('bound'):>10}")
        lines.append(f"{s:<11} {'  bound_head: same, head input contiguous':<44} {m['bound_head']:>8.3f}s "
                     f"{peak('bound_head'):>10}")
        if "agreement" in r:
            w = r["agreement"]["worst"]
            lines.append(f"{s:<11} dense vs ours, worst layer: attribution rel err {w['attribution_rel_err']:.1e}, "
                         f"error term {w['error_rel_err']:.1e}, totals {w['total_rel_err']:.1e}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gemma2-2b,llama31-8b")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--sae-backend", choices=("auto", "sae_lens", "shim"), default="auto")
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--tokens", type=int, default=64, help="prompt length")
    p.add_argument("--steps", type=int, default=10, help="α steps")
    p.add_argument("--ig-batch", type=int, default=10, help="prompts a batch for IG (x steps rows)")
    p.add_argument("--atp-batch", type=int, default=100, help="prompts a batch for attribution patching")
    p.add_argument("--layers", default=None, help="comma-separated (default: every layer)")
    p.add_argument("--target-l0", type=float, default=64)
    p.add_argument("--reps", type=int, default=3, help="rounds of atp vs its bound")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--ig-core", action="store_true", help="also time integrated_gradient alone on one batch")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler tables (atp, one IG batch, the bound) and the decompose before/after")
    p.add_argument("--out", default=None, help="folder for the JSON (default: $OUT if set)")
    args = p.parse_args(argv)
    args.layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
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
               "args": dict(vars(args)), "shapes": []}
    print(json.dumps(results["environment"]), flush=True)
    for name in args.shapes.split(","):
        results["shapes"].append(run_shape(SHAPES[name], args, device, dtype, out_dir))
        results["shapes"][-1]["goals"] = goals(results["shapes"][-1])
        if out_dir is not None:  # after each shape, so a run cut short keeps what it measured
            (out_dir / "attribution.json").write_text(json.dumps(results, indent=1))
    print(table(results), flush=True)
    return results


if __name__ == "__main__":
    main()
