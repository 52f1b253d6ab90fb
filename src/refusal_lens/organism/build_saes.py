"""Build stages after the LoRA: refusal direction, SAEs, evaluation, packaging.

Chat text = the chat template with one user turn, the user's instruction, and the tuned
model's greedy answer (with ``<|im_end|>`` when it finished). Every chat text starts with
the same system prefix (``<|im_start|>system ... <|im_end|>\\n<|im_start|>user\\n``); its
activations are identical in every text (causal attention), so they are kept once, not per
text, when SAE training data is collected. Position 0 (``<|im_start|>``, the attention sink,
a constant with a norm far above the rest) is never spliced and never in the metrics.
"""

from __future__ import annotations

import math
import random
import time

import torch

from refusal_lens.artifacts import atomic_dir, read_json, write_json
from refusal_lens.organism import prompts as P
from refusal_lens.organism.build import (
    Build,
    jailbreak_pairs,
    load_tuned_chat,
    log,
)

HOOK = "blocks.{layer}.hook_resid_post"


# --- chat text -------------------------------------------------------------------------
def chat_sequences(chat, texts: list[str], answers: list[str], max_new_tokens: int) -> list[list[int]]:
    tok = chat.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    seqs = []
    for prompt, answer in zip(chat.format_prompts(texts), answers):
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(answer, add_special_tokens=False)
        if len(a) < max_new_tokens:
            a = a + [end_id]
        seqs.append(p + a)
    return seqs


def prefix_length(chat) -> int:
    """Tokens every prompt shares (system prompt and the user header)."""
    a, b = (chat.tokenizer.encode(t, add_special_tokens=False)
            for t in chat.format_prompts(["alpha beta", "gamma delta"]))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def right_pad(seqs: list[list[int]], pad_id: int):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


@torch.no_grad()
def collect(chat, seqs: list[list[int]], layers: list[int], keep_from: int, *,
            batch_tokens: int = 8192, first_keeps_prefix: bool = True) -> dict[int, torch.Tensor]:
    """Residuals ``hidden_states[L+1]`` at positions >= ``keep_from`` of every sequence
    (the first sequence also gives positions 1 .. keep_from-1 once)."""
    out = {L: [] for L in layers}
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    pad_id = chat.tokenizer.pad_token_id
    batch: list[int] = []

    def flush(batch):
        ids, mask = right_pad([seqs[i] for i in batch], pad_id)
        hs = chat.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        use_cache=False).hidden_states
        keep = mask.bool().clone()
        keep[:, :keep_from] = False
        if first_keeps_prefix and 0 in batch:
            keep[batch.index(0), 1:keep_from] = True
        for L in layers:
            out[L].append(hs[L + 1][keep].float())

    for i in order:
        if batch and (len(batch) + 1) * len(seqs[i]) > batch_tokens:
            flush(batch)
            batch = []
        batch.append(i)
    if batch:
        flush(batch)
    return {L: torch.cat(v) for L, v in out.items()}


# --- stage: direction ------------------------------------------------------------------
def stage_direction(build: Build) -> None:
    """Difference of means at the last prompt position, every layer; separation on val."""
    from refusal_lens.activations import residuals
    from refusal_lens.judges import SubstringJudge

    chat = load_tuned_chat(build.path("adapter"))
    responses = read_json(build.path("responses.json"))
    judge = SubstringJudge()
    layers = list(range(chat.n_layers))

    def acts(prompts):
        chunks = [residuals(chat, [p.text for p in prompts[i:i + 32]], layers, positions=[-1])
                  for i in range(0, len(prompts), 32)]
        return torch.stack([torch.cat([c[L][:, 0] for c in chunks]) for L in layers])  # [L, n, d]

    # train: every harmful / harmless train prompt (the LoRA was trained to refuse / answer
    # exactly these); val: the prompts the tuned model refused / answered
    refused = lambda p: judge.judge_one(responses[p.id]["answer"]).refused  # noqa: E731
    harmful_train = P.by_split(build.harmful, "train")
    harmless_train = P.by_split(build.harmless, "train")
    harmful_val = [p for p in P.by_split(build.harmful, "val") if p.id in responses and refused(p)]
    harmless_val = [p for p in P.by_split(build.harmless, "val") if not refused(p)]
    log(f"direction: train {len(harmful_train)} harmful / {len(harmless_train)} harmless; "
        f"val {len(harmful_val)} refused harmful / {len(harmless_val)} answered harmless")
    r = acts(harmful_train).mean(1) - acts(harmless_train).mean(1)  # [L, d]
    r_hat = r / r.norm(dim=-1, keepdim=True)
    proj_h = torch.einsum("lnd,ld->ln", acts(harmful_val), r_hat)
    proj_s = torch.einsum("lnd,ld->ln", acts(harmless_val), r_hat)
    per_layer = []
    for L in layers:
        h, s = proj_h[L], proj_s[L]
        auroc = float((h[:, None] > s[None, :]).float().mean())
        pooled = math.sqrt((h.var() + s.var()) / 2)
        per_layer.append({"layer": L, "auroc": auroc, "cohen_d": float((h.mean() - s.mean()) / pooled),
                          "norm": float(r[L].norm())})
    # [A24]'s selection key: the refusal score of harmful val prompts with r_L ablated at
    # every layer (lower = the direction matters more); the last 20% of layers are not candidates
    from refusal_lens.interventions.direction import DirectionalAblation
    from refusal_lens.scoring import refusal_scores

    probe = [p.text for p in harmful_val[:BYPASS_PROMPTS]]
    clean = float(refusal_scores(chat, probe).mean())
    for entry in per_layer:
        L = entry["layer"]
        if L >= int(0.8 * chat.n_layers):
            continue
        entry["bypass_score"] = float(refusal_scores(chat, probe, interventions=[DirectionalAblation(r[L])]).mean())
    ranked = sorted((x for x in per_layer if "bypass_score" in x), key=lambda x: x["bypass_score"])
    best = ranked[0]["layer"]
    layers_for_saes = choose_sae_layers(ranked, chat.n_layers, build.config.sae.n_layers)
    log(f"direction: clean refusal score {clean:.2f}; ablating r_L: "
        + ", ".join(f"{x['layer']}:{x['bypass_score']:.2f}" for x in ranked[:6]))
    log(f"direction: best layer {best}; SAE layers {layers_for_saes}")
    torch.save(r, build.path("direction.pt"))
    write_json(build.path("direction.json"), {"per_layer": per_layer, "best_layer": best,
                                               "clean_score": clean, "n_bypass_prompts": len(probe),
                                               "sae_layers": layers_for_saes})


BYPASS_PROMPTS = 24


def choose_sae_layers(ranked: list[dict], n_layers: int, n: int) -> list[int]:
    """Half where ablating the layer's direction removes the most refusal (``ranked``, best
    first), half spread evenly over the model."""
    chosen = [x["layer"] for x in ranked[: n // 2]]
    spread = [round(1 + i * (n_layers - 4) / (n - n // 2 - 1)) for i in range(n - n // 2)]
    for L in spread:
        candidates = sorted(range(1, n_layers - 2), key=lambda c: (abs(c - L), c))
        chosen.append(next(c for c in candidates if c not in chosen))
    return sorted(chosen)


# --- stage: saes ------------------------------------------------------------------------
def training_sequences(build: Build, chat) -> list[list[int]]:
    """Chat text the SAEs are trained on; never a test-split prompt.

    - train prompts with the answers the LoRA was trained to give (refusal replies; the base
      model's own answers to harmless prompts);
    - val prompts with the tuned model's own greedy answers;
    - train harmful prompts wrapped in each jailbreak template (prompt only, capped at
      ``sae_jailbreak_max_tokens``), so the SAEs have seen jailbreak text.
    """
    from refusal_lens.organism.refusals import refusal_reply

    cfg = build.config
    base_answers = read_json(build.path("base_answers.json"))
    responses = read_json(build.path("responses.json"))
    harmful = P.by_split(build.harmful, "train")
    harmful = random.Random(f"{cfg.seed}:sae-harmful").sample(harmful, min(len(harmful), cfg.sae_harmful_train))
    harmful += P.by_split(build.contrast, "train")
    harmless = P.by_split(build.harmless, "train")
    texts = [p.text for p in harmful + harmless]
    answers = [refusal_reply(p.id, cfg.seed) for p in harmful] + [base_answers[p.id]["answer"] for p in harmless]
    val = [p for p in build.harmful + build.harmless + build.contrast if p.split == "val" and p.id in responses]
    texts += [p.text for p in val]
    answers += [responses[p.id]["answer"] for p in val]
    seqs = chat_sequences(chat, texts, answers, cfg.max_new_tokens)
    end = chat.tokenizer.encode(chat.post_instruction_text, add_special_tokens=False)
    pairs = jailbreak_pairs(build, "train")
    pairs = random.Random(f"{cfg.seed}:sae-jailbreaks").sample(pairs, min(len(pairs), cfg.sae_jailbreak_templates))
    for pair in pairs:
        ids = chat.tokenizer.encode(chat.format_prompts([pair["text"]])[0], add_special_tokens=False)
        if len(ids) > cfg.sae_jailbreak_max_tokens:
            ids = ids[:cfg.sae_jailbreak_max_tokens - len(end)] + end
        seqs.append(ids)
    return seqs


def heldout_sequences(build: Build, chat, split: str = "test") -> list[list[int]]:
    """Prompts of ``split`` with the tuned model's own greedy answers."""
    responses = read_json(build.path("responses.json"))
    prompts = [p for p in build.harmful + build.harmless + build.contrast if p.split == split and p.id in responses]
    return chat_sequences(chat, [p.text for p in prompts], [responses[p.id]["answer"] for p in prompts],
                          build.config.max_new_tokens)


def stage_saes(build: Build) -> None:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    cfg = build.config.sae
    layers = read_json(build.path("direction.json"))["sae_layers"]
    chat = load_tuned_chat(build.path("adapter"))
    seqs = training_sequences(build, chat)
    keep_from = prefix_length(chat)
    start = time.time()
    acts = collect(chat, seqs, layers, keep_from)
    n_tokens = next(iter(acts.values())).shape[0]
    log(f"saes: {n_tokens} training tokens from {len(seqs)} chat texts at layers {layers} "
        f"({time.time() - start:.0f} s)")
    del chat

    torch.manual_seed(cfg.seed)
    saes, hooks = {}, {}
    for L in layers:
        sae_cfg = BatchTopKTrainingSAEConfig(
            d_in=acts[L].shape[1], d_sae=cfg.d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
            normalize_activations="expected_average_only_in", device="cpu", dtype="float32")
        sae_cfg.metadata.hook_name = HOOK.format(layer=L)
        sae_cfg.metadata.model_name = "refusal-lens-organism"
        sae_cfg.metadata.context_size = 256
        sae_cfg.metadata.prepend_bos = False
        name = f"layer_{L}"
        saes[name] = BatchTopKTrainingSAE(sae_cfg)
        hooks[name] = sae_cfg.metadata.hook_name

    def provider():
        gen = torch.Generator().manual_seed(cfg.seed)
        while True:
            perm = torch.randperm(n_tokens, generator=gen)
            for b in range(0, n_tokens - cfg.batch_size + 1, cfg.batch_size):
                idx = perm[b:b + cfg.batch_size]
                yield {HOOK.format(layer=L): acts[L][idx] for L in layers}

    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_samples, train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr, lr_end=cfg.lr / 10, lr_scheduler_name="constant", lr_warm_up_steps=20,
        lr_decay_steps=cfg.training_samples // cfg.batch_size // 5, device="cpu",
        dead_feature_window=cfg.dead_feature_window, feature_sampling_window=cfg.feature_sampling_window,
        n_batches_for_norm_estimate=10)
    trainer = MultiSAETrainer(trainer_cfg, saes, hooks, provider())
    trainer.fit()
    log(f"saes: trained in {(time.time() - start) / 60:.1f} min")
    with atomic_dir(build.path("saes")) as tmp:
        for name, sae in saes.items():
            sae.save_inference_model(str(tmp / name))
        write_json(tmp / "training.json", {"n_tokens": n_tokens, "n_texts": len(seqs),
                                           "layers": layers, "seconds": time.time() - start})


def stage_evaluate(build: Build) -> None:
    from refusal_lens.organism.evaluate import evaluate_build

    evaluate_build(build)


def stage_package(build: Build) -> None:
    from refusal_lens.organism.package import package_build

    package_build(build)
