"""Jailbreak dissection [Y25] (METHOD.md §5): pairs of an adversarial prompt that jailbreaks the
model and its plain harmful request that the model refuses.

- pairs: in-the-wild templates filled with a request, a request with a GCG suffix, hub sets that
  keep each adversarial prompt's plain request (WildJailbreak's ``vanilla``), or a pair file;
- ``judge_pairs``: greedy answers to both sides, judged; a pair counts when the plain request is
  refused and the adversarial prompt answered;
- ``relative_drop``: how much weaker the refusal features (last prompt position) and the harm
  features (largest activation over the instruction) are on the adversarial side;
- ``token_attribution``: which tokens of the adversarial prompt push the refusal features down,
  by integrated gradients of their pre-activations on the input embeddings (the α points and
  frozen weights of ``refusal_lens.attribution``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_lens.activations import read_features
from refusal_lens.analyses.upstream import instruction_max
from refusal_lens.attribution import check_sae, interpolation_points
from refusal_lens.attribution.gradients import weights_frozen
from refusal_lens.data import Prompt, fill_template
from refusal_lens.generation import generate
from refusal_lens.hooks import add_output_edit, hooks_removed_on_exit
from refusal_lens.interventions import FeatureKey, group_by_layer
from refusal_lens.judges import Judge
from refusal_lens.models import ChatModel, PromptTooLongError
from refusal_lens.saes import SAESet


@dataclass(frozen=True)
class JailbreakPair:
    id: str
    family: str        # the attack: inthewild-template, gcg, wildjailbreak, a pair file's category ...
    adversarial: str
    plain: str
    plain_id: str      # the plain request's prompt id (the probes' leakage check compares it)


def template_pairs(templates: Sequence[Prompt], requests: Sequence[Prompt], n: int, seed: int) -> list[JailbreakPair]:
    """``n`` random (template, request) combinations, each template's slot filled with the request."""
    combos = [(t, r) for t in templates for r in requests]
    chosen = random.Random(seed).sample(combos, min(n, len(combos)))
    return [JailbreakPair(f"{t.id}|{r.id}", "inthewild-template", fill_template(t, r.text), r.text, r.id)
            for t, r in chosen]


def suffix_pairs(suffixes: Sequence[str], requests: Sequence[Prompt], n: int, seed: int,
                 family: str = "gcg") -> list[JailbreakPair]:
    """``n`` random (suffix, request) combinations: the request, a space, the suffix."""
    combos = [(j, r) for j in range(len(suffixes)) for r in requests]
    chosen = random.Random(seed).sample(combos, min(n, len(combos)))
    return [JailbreakPair(f"{family}:{j}|{r.id}", family, f"{r.text} {suffixes[j]}", r.text, r.id)
            for j, r in chosen]


def vanilla_pairs(adversarial: Sequence[Prompt], family: str, plain_field: str = "vanilla") -> list[JailbreakPair]:
    """Pairs from prompts that keep their plain request in ``meta[plain_field]`` (WildJailbreak's
    adversarial rows of its train split); prompts without one are left out."""
    return [JailbreakPair(p.id, family, p.text, str(p.meta[plain_field]).strip(), f"{p.id}:{plain_field}")
            for p in adversarial if str(p.meta.get(plain_field) or "").strip()]


def file_pairs(adversarial: Sequence[Prompt], plain: Sequence[Prompt], family: str) -> list[JailbreakPair]:
    """Pairs from a pair file read twice (its ``adversarial`` and ``plain`` columns, same rows); a
    row's ``category`` is its attack family."""
    return [JailbreakPair(a.id, a.category or family, a.text, p.text, f"{p.id}:plain")
            for a, p in zip(adversarial, plain)]


def fitting_pairs(chat_model: ChatModel, pairs: Sequence[JailbreakPair],
                  max_new_tokens: int) -> tuple[list[JailbreakPair], int]:
    """The pairs whose adversarial prompt, plus the answer to generate, fits the model's context;
    and how many did not."""
    kept = []
    for pair in pairs:
        try:
            chat_model.tokenize([pair.adversarial], max_new_tokens=max_new_tokens)
        except PromptTooLongError:
            continue
        kept.append(pair)
    return kept, len(pairs) - len(kept)


@dataclass
class PairVerdicts:
    plain_refused: list[bool]
    adversarial_refused: list[bool]
    plain_answers: list[str]
    adversarial_answers: list[str]

    def jailbreaks(self) -> list[bool]:
        """Plain request refused and adversarial prompt answered."""
        return [p and not a for p, a in zip(self.plain_refused, self.adversarial_refused)]


def judge_pairs(chat_model: ChatModel, pairs: Sequence[JailbreakPair], judge: Judge, *, max_new_tokens: int = 64,
                batch_size: int = 8) -> PairVerdicts:
    """Greedy answers to both sides of every pair, judged."""
    plain = [p.plain for p in pairs]
    adversarial = [p.adversarial for p in pairs]
    plain_answers = generate(chat_model, plain, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             progress="plain requests")
    adversarial_answers = generate(chat_model, adversarial, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   progress="adversarial prompts")
    return PairVerdicts([v.refused for v in judge.judge(plain, plain_answers)],
                        [v.refused for v in judge.judge(adversarial, adversarial_answers)],
                        plain_answers, adversarial_answers)


def refusal_activation(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str],
                       features: Sequence[FeatureKey], batch_size: int = 8) -> torch.Tensor:
    """``[prompts]``: the refusal features' summed activation at the last prompt position."""
    read = read_features(chat_model, saes, instructions, features, positions=[-1], batch_size=batch_size)
    return read.values[:, 0].sum(1).double()


def harm_activation(chat_model: ChatModel, saes: SAESet, instructions: Sequence[str],
                    features: Sequence[FeatureKey], batch_size: int = 8) -> torch.Tensor:
    """``[prompts]``: the harm features' summed activation, each at its largest over the instruction
    (a wrapper around the request does not dilute it)."""
    read = read_features(chat_model, saes, instructions, features, batch_size=batch_size)
    return instruction_max(read, chat_model.n_pre_instruction_tokens).sum(1).double()


def relative_drop(plain: torch.Tensor, adversarial: torch.Tensor) -> list[float | None]:
    """``(plain - adversarial) / plain`` per pair; ``None`` where the plain side is 0."""
    return [float((p - a) / p) if p > 0 else None for p, a in zip(plain.tolist(), adversarial.tolist())]


@dataclass
class TokenAttribution:
    tokens: list[str]              # the instruction's tokens, decoded one by one (those of one character together)
    scores: list[float]            # each one's share of F(prompt) - F(baseline)
    in_request: list[bool] | None  # whether it belongs to the plain request (None: unknown)
    total: float                   # F(prompt): the features' summed pre-activation, last position
    baseline: float                # F with every instruction token replaced by the baseline token


def _pre_activation_readout(chat_model: ChatModel, saes: SAESet, features: Sequence[FeatureKey]):
    """A function of ``inputs_embeds`` (``[rows, seq, d]``, one unpadded prompt) giving the
    features' summed encoder pre-activation ``(x - b_dec) W_enc[:, i] + b_enc[i]`` at the last
    position, differentiable. The pre-activation, not the activation: a JumpReLU or TopK
    activation jumps (integrated gradients would miss the jump), and a feature the wrapper
    switches off has no gradient at all."""
    weights = {}
    for layer, index in group_by_layer(features).items():
        sae = saes[layer]
        check_sae(sae, layer)
        idx = torch.tensor(index, device=sae.W_enc.device)
        weights[layer] = tuple(t.detach().to(chat_model.device, chat_model.dtype) for t in (
            sae.W_enc[:, idx].sum(1), sae.b_enc[idx].sum(), sae.b_dec * sae.cfg.apply_b_dec_to_input))

    def readout(embeds: torch.Tensor) -> torch.Tensor:
        total = embeds.new_zeros(embeds.shape[0])
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        handles = []

        def add(layer: int, hidden: torch.Tensor) -> None:
            nonlocal total
            encoder, bias, b_dec = weights[layer]
            total = total + (hidden[:, -1] - b_dec) @ encoder + bias

        with hooks_removed_on_exit(handles):
            handles += [add_output_edit(chat_model.layers[L], lambda h, L=L: add(L, h)) for L in weights]
            chat_model.model(inputs_embeds=embeds, attention_mask=mask,
                             position_ids=torch.arange(embeds.shape[1], device=embeds.device)[None],
                             use_cache=False, logits_to_keep=1)
        return total

    return readout


def token_attribution(chat_model: ChatModel, saes: SAESet, instruction: str, features: Sequence[FeatureKey], *,
                      plain: str | None = None, steps: int = 16, baseline_token: int | None = None) -> TokenAttribution:
    """Integrated gradients of the features' summed pre-activation at the last prompt position
    with respect to the input embeddings of the instruction's tokens: ``(e_t - b) · mean_α ∂F/∂e_t``
    at ``α_k = k/steps``, from a baseline where each of them is the embedding ``b`` of
    ``baseline_token`` (default: the pad token) and the template's tokens stay. Not a zero
    embedding: an RMS- or layer-norm maps ``α e`` to the same input for every ``α > 0``, so on a
    path from zero the whole change would happen at ``α ≈ 0``, between the sampled points. The
    scores add up to ``F(prompt) - F(baseline)`` as ``steps`` grows; a negative score marks a
    token that pushes the features down."""
    batch = chat_model.tokenize([instruction])
    ids = batch["input_ids"]
    start, stop = chat_model.n_pre_instruction_tokens, ids.shape[1] - chat_model.n_post_instruction_tokens
    readout = _pre_activation_readout(chat_model, saes, features)
    neutral = ids.clone()
    neutral[0, start:stop] = chat_model.tokenizer.pad_token_id if baseline_token is None else int(baseline_token)
    with torch.no_grad():
        embeds = chat_model.model.get_input_embeddings()(ids)
        baseline = chat_model.model.get_input_embeddings()(neutral)
    alphas = interpolation_points(steps).to(embeds.device, embeds.dtype)
    points = (baseline + alphas[:, None, None] * (embeds - baseline)).requires_grad_(True)
    with weights_frozen(chat_model.model), torch.enable_grad():
        values = readout(points)
        (grad,) = torch.autograd.grad(values.sum(), points)
    with torch.no_grad():
        scores = ((embeds - baseline)[0] * grad.mean(0)).sum(-1)[start:stop]
        ends = readout(torch.cat([embeds, baseline]))
    pieces = readable_pieces(chat_model.tokenizer, ids[0, start:stop].tolist())
    in_request = _request_mask(chat_model, instruction, plain, start, stop)
    spans, at = [], 0
    for piece in pieces:
        spans.append(slice(at, at + len(piece)))
        at += len(piece)
    return TokenAttribution(tokens=[chat_model.tokenizer.decode(piece) for piece in pieces],
                            scores=[float(scores[span].double().sum()) for span in spans],
                            in_request=None if in_request is None else [all(in_request[span]) for span in spans],
                            total=float(ends[0]), baseline=float(ends[1]))


MAX_CHARACTER_TOKENS = 4  # a UTF-8 character is at most 4 bytes: 4 byte-level tokens


def readable_pieces(tokenizer, token_ids: Sequence[int]) -> list[list[int]]:
    """The tokens grouped so that each group decodes to whole characters: a byte-level BPE splits
    an emoji or a CJK character over tokens that alone decode to U+FFFD. A token that decodes to
    whole characters is its own group."""
    pieces, current = [], []
    for token in token_ids:
        current.append(token)
        if "\ufffd" not in tokenizer.decode(current) or len(current) == MAX_CHARACTER_TOKENS:
            pieces.append(current)
            current = []
    if current:
        pieces.append(current)
    return pieces


def _request_mask(chat_model: ChatModel, instruction: str, plain: str | None, start: int,
                  stop: int) -> list[bool] | None:
    """Which of the instruction's tokens fall inside the plain request's text, from the fast
    tokenizer's character offsets; None when that is unknown."""
    tokenizer = chat_model.tokenizer
    if not plain or plain not in instruction or not getattr(tokenizer, "is_fast", False):
        return None
    formatted = chat_model.format_prompts([instruction])[0]
    encoded = tokenizer(formatted, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(chat_model.tokenize([instruction])["input_ids"][0]) - len(encoded["input_ids"])
    begin = formatted.find(instruction) + instruction.find(plain)
    end = begin + len(plain)
    mask = []
    for position in range(start, stop):
        if not 0 <= position - shift < len(encoded["offset_mapping"]):
            return None
        a, b = encoded["offset_mapping"][position - shift]
        mask.append(a < end and b > begin)
    return mask
