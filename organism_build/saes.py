"""Stage ``saes``: residual activations of chat text (prompt + answer), and the SAEs.

Chat text is :func:`refusal_lens.organism.measure.chat_sequences`. Every chat text starts with
the same system prefix; its activations are identical in every text (causal attention), so
they are kept once, not per text. Position 0 (the attention sink) is never kept.
"""

from __future__ import annotations

import random
import time

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.training.multi_sae_trainer import MultiSAETrainer

from organism_build import prompt_sets as P
from organism_build.answers import jailbreak_pairs
from organism_build.build import Build, load_tuned_chat, log
from organism_build.refusals import refusal_reply
from refusal_lens.activations import residuals
from refusal_lens.artifacts import atomic_dir, read_json, write_json
from refusal_lens.models import ChatModel
from refusal_lens.organism.measure import chat_sequences, positions_in_text, prefix_length, right_padded

HOOK = "blocks.{layer}.hook_resid_post"


def token_batches(seqs: list[list[int]], batch_tokens: int) -> list[list[int]]:
    """Indices of ``seqs``, shortest first, in batches of at most ``batch_tokens`` padded tokens."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[list[int]] = [[]]
    for i in order:
        if out[-1] and (len(out[-1]) + 1) * len(seqs[i]) > batch_tokens:
            out.append([])
        out[-1].append(i)
    return [b for b in out if b]


@torch.no_grad()
def collect(chat: ChatModel, seqs: list[list[int]], layers: list[int], keep_from: int, *,
            batch_tokens: int = 8192, first_keeps_prefix: bool = True) -> dict[int, torch.Tensor]:
    """Residuals (:func:`~refusal_lens.activations.residuals` of right-padded batches, as the
    shipped SAEs were trained) at positions >= ``keep_from`` of every sequence (the first
    sequence also gives positions 1 .. keep_from-1 once), batch by batch in
    :func:`token_batches` order, each sequence's tokens in order."""
    out = {L: [] for L in layers}
    for batch in token_batches(seqs, batch_tokens):
        encoded = right_padded(chat, [seqs[i] for i in batch])
        position = positions_in_text(encoded)
        keep = encoded["attention_mask"].bool() & (position >= keep_from)
        if first_keeps_prefix and 0 in batch:
            keep[batch.index(0)] |= (position[batch.index(0)] >= 1) & (position[batch.index(0)] < keep_from)
        acts = residuals(chat, encoded, layers)
        for L in layers:
            out[L].append(acts[L][keep].float())
    return {L: torch.cat(v) for L, v in out.items()}


def training_sequences(build: Build, chat: ChatModel) -> list[list[int]]:
    """Chat text the SAEs are trained on; never a test-split prompt.

    - train prompts with the answers the LoRA was trained to give (refusal replies; the base
      model's own answers to harmless prompts);
    - val prompts with the tuned model's own greedy answers;
    - train harmful prompts wrapped in each jailbreak template (prompt only, capped at
      ``sae_jailbreak_max_tokens``), so the SAEs have seen jailbreak text.
    """
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


def heldout_sequences(build: Build, chat: ChatModel, split: str = "test") -> list[list[int]]:
    """Prompts of ``split`` with the tuned model's own greedy answers."""
    responses = read_json(build.path("responses.json"))
    prompts = [p for p in build.harmful + build.harmless + build.contrast if p.split == split and p.id in responses]
    return chat_sequences(chat, [p.text for p in prompts], [responses[p.id]["answer"] for p in prompts],
                          build.config.max_new_tokens)


def training_saes(build: Build, layers: list[int], d_in: int) -> tuple[dict, dict]:
    """sae_lens BatchTopK training SAEs ``{"layer_L": sae}`` and their hook names."""
    cfg = build.config.sae
    torch.manual_seed(cfg.seed)
    saes, hooks = {}, {}
    for L in layers:
        sae_cfg = BatchTopKTrainingSAEConfig(
            d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
            normalize_activations="expected_average_only_in", device="cpu", dtype="float32")
        sae_cfg.metadata.hook_name = HOOK.format(layer=L)
        sae_cfg.metadata.model_name = "refusal-lens-organism"
        sae_cfg.metadata.context_size = 256
        sae_cfg.metadata.prepend_bos = False
        name = f"layer_{L}"
        saes[name] = BatchTopKTrainingSAE(sae_cfg)
        hooks[name] = sae_cfg.metadata.hook_name
    return saes, hooks


def stage_saes(build: Build) -> None:
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
    saes, hooks = training_saes(build, layers, d_in=acts[layers[0]].shape[1])

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
    MultiSAETrainer(trainer_cfg, saes, hooks, provider()).fit()
    log(f"saes: trained in {(time.time() - start) / 60:.1f} min")
    with atomic_dir(build.path("saes")) as tmp:
        for name, sae in saes.items():
            sae.save_inference_model(str(tmp / name))
        write_json(tmp / "training.json", {"n_tokens": n_tokens, "n_texts": len(seqs),
                                           "layers": layers, "seconds": time.time() - start})
