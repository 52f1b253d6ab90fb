"""What an SAE feature is, read off the model and the prompts: a card to check a finding against.

A card holds, for one feature ``(layer, index)``:

- the cosine of its decoder row with a direction (the refusal direction);
- how often and how strongly it fires on two prompt sets (harmful and harmless);
- the prompts it fires on most, token by token, with the strongest token marked;
- the tokens its decoder row promotes and suppresses, read through the final norm and the
  unembedding (``logit_effects``);
- its Neuronpedia page, where the SAE release has a Neuronpedia id.

Tokens read: the instruction and the chat template's tokens after it (where refusal is
decided); not BOS or the template's header before the instruction, which every prompt shares
and on which SAE activations are outliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from pydantic import BaseModel, Field
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from torch import nn

from refusal_lens.activations import read_features
from refusal_lens.interventions import FeatureKey, group_by_layer
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet

NEURONPEDIA = "https://www.neuronpedia.org"
FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f")
WINDOW, WINDOW_AFTER = 64, 16  # a longer top prompt keeps 64 tokens, 16 of them after its strongest
STRONGEST_TOKEN, ACTIVE_TOKEN = "bold black on yellow", "underline yellow"  # in the terminal card
EFFECT_CHUNK = 16  # decoder rows whose logits over the whole vocabulary are computed at once


class ActivationStats(BaseModel):
    n_prompts: int = Field(description="prompts in the set")
    frequency: float = Field(description="share of them on which the feature fires (> 0) at some token read")
    mean_activation: float = Field(description="mean over them of its largest activation on the prompt (0 where it "
                                               "does not fire)")


class TopPrompt(BaseModel):
    prompt_id: str = Field(description="the prompt's id")
    label: str = Field(description="`harmful` or `harmless`")
    tokens: list[str] = Field(description="the tokens read (the instruction and the template after it), each "
                                          "decoded alone; a longer prompt keeps 64 of them around the strongest")
    activations: list[float] = Field(description="the feature's activation on each of `tokens` (4 significant "
                                                 "digits)")
    max_index: int = Field(description="index into `tokens` of the strongest activation")
    cut_before: bool = Field(description="tokens before the window were left out")
    cut_after: bool = Field(description="tokens after the window were left out")

    @property
    def max_activation(self) -> float:
        return self.activations[self.max_index]


class TokenEffect(BaseModel):
    token: str = Field(description="the token, decoded alone")
    logit: float = Field(description="its logit if the residual stream held only the decoder row "
                                     "(see `logit_effects`)")


class FeatureCard(BaseModel):
    layer: int = Field(description="the SAE's layer")
    feature: int = Field(description="the feature's index in that SAE")
    sets: list[str] = Field(description="the run's feature sets it belongs to")
    cosine: float = Field(description="cosine of its decoder row with the refusal direction")
    scores: dict[str, float] = Field(default_factory=dict, description=(
        "numbers a stage gave it: `interaction_strength` (the factorization machine), `attribution` where an "
        "attribution stage computed one"))
    harmful: ActivationStats = Field(description="on the run's harmful prompts")
    harmless: ActivationStats = Field(description="on the run's harmless prompts")
    top_prompts: list[TopPrompt] = Field(description="the prompts it fires on most, strongest first (only those "
                                                     "where it fires)")
    promoted: list[TokenEffect] = Field(description="the tokens its decoder row raises most, strongest first")
    suppressed: list[TokenEffect] = Field(description="the tokens it lowers most, strongest first")
    neuronpedia: str | None = Field(None, description="its Neuronpedia page; null where the SAE release has no "
                                                      "Neuronpedia id (a folder, the organism)")

    @property
    def key(self) -> FeatureKey:
        return (self.layer, self.feature)

    @property
    def name(self) -> str:
        return feature_name(self.key)


def feature_name(key: FeatureKey) -> str:
    """``L14:345``."""
    return f"L{key[0]}:{key[1]}"


def neuronpedia_url(neuronpedia_id: str | None, feature: int) -> str | None:
    return f"{NEURONPEDIA}/{neuronpedia_id}/{feature}" if neuronpedia_id else None


# --- the decoder row ----------------------------------------------------------------------
def decoder_rows(saes: SAESet, keys: Sequence[FeatureKey]) -> torch.Tensor:
    """``[len(keys), d_model]`` float32 decoder rows, in the order of ``keys``."""
    rows = {}
    for layer, index in group_by_layer(keys).items():
        weights = saes[layer].W_dec.detach()[torch.tensor(index, device=saes[layer].W_dec.device)].float().cpu()
        rows.update({(layer, i): row for i, row in zip(index, weights)})
    return torch.stack([rows[tuple(k)] for k in keys])


def decoder_cosines(saes: SAESet, keys: Sequence[FeatureKey], direction: torch.Tensor) -> list[float]:
    rows = decoder_rows(saes, keys)
    direction = direction.float().cpu()
    unit = direction / direction.norm()
    return ((rows @ unit) / rows.norm(dim=-1).clamp_min(1e-12)).tolist()


def final_norm(chat_model: ChatModel) -> nn.Module:
    """The norm between the last decoder block and the unembedding: the ``norm`` (or ``ln_f`` ...)
    of the module that holds the decoder layers."""
    for module in chat_model.model.modules():
        if getattr(module, "layers", None) is chat_model.layers:
            for name in FINAL_NORM_NAMES:
                norm = getattr(module, name, None)
                if isinstance(norm, nn.Module):
                    return norm
    raise TypeError(f"Cannot find the final norm of {type(chat_model.model).__name__} next to its decoder layers "
                    f"(looked for {', '.join(FINAL_NORM_NAMES)}).")


@torch.no_grad()
def logit_effects(chat_model: ChatModel, rows: torch.Tensor) -> torch.Tensor:
    """``[n, vocab]``: each row's direct effect on the logits, ``W_U · (norm(d) − norm(0))``.

    The final norm is ``w ⊙ (x − mean x) / scale(x) + b`` (RMSNorm: no centring, no bias;
    Gemma's ``(1 + w)``, the same form). Of it the row keeps what acts on a direction: the
    centring (a LayerNorm's) and the elementwise weight. The bias is dropped (it is there
    whatever the features) and the scale is frozen: the real residual's scale divides every
    logit by the same positive number, so it changes their size, not their order. Running
    the model's own norm module on ``d`` and on ``0`` gives exactly this for every norm form,
    with ``d`` scaled to unit RMS: the logits read as if the residual stream held only
    ``d``, at the size of a real residual.
    """
    norm = final_norm(chat_model)
    unembed = chat_model.model.get_output_embeddings().weight
    param = next(norm.parameters(), unembed)
    x = rows.to(device=param.device, dtype=param.dtype)
    normed = (norm(x) - norm(torch.zeros_like(x[:1]))).to(device=unembed.device, dtype=unembed.dtype)
    return (normed @ unembed.T).float().cpu()


def top_tokens(chat_model: ChatModel, rows: torch.Tensor, k: int) -> list[tuple[list[TokenEffect], list[TokenEffect]]]:
    """For each decoder row: the ``k`` tokens it promotes most and the ``k`` it suppresses most."""
    out = []
    for start in range(0, len(rows), EFFECT_CHUNK):
        logits = logit_effects(chat_model, rows[start:start + EFFECT_CHUNK])
        k_ = min(k, logits.shape[-1])
        up, down = logits.topk(k_, dim=-1), (-logits).topk(k_, dim=-1)
        for j in range(len(logits)):
            out.append(([_effect(chat_model, i, v) for v, i in zip(up.values[j].tolist(), up.indices[j].tolist())],
                        [_effect(chat_model, i, -v) for v, i in zip(down.values[j].tolist(),
                                                                     down.indices[j].tolist())]))
    return out


def _effect(chat_model: ChatModel, token_id: int, logit: float) -> TokenEffect:
    return TokenEffect(token=token_text(chat_model, token_id), logit=logit)


def token_text(chat_model: ChatModel, token_id: int) -> str:
    """A token decoded alone; where that gives nothing readable (one byte of a character, an
    empty string), the vocabulary's own spelling of it (``<0xE2>``, ``âĢ``)."""
    text = chat_model.tokenizer.decode([token_id])
    if text and "\ufffd" not in text:
        return text
    raw = chat_model.tokenizer.convert_ids_to_tokens(token_id)
    return raw if isinstance(raw, str) and raw else text or f"<{token_id}>"


# --- activations on prompts ---------------------------------------------------------------
@dataclass(frozen=True)
class LabelledPrompt:
    id: str
    text: str
    label: str  # harmful | harmless


@dataclass
class PromptActivations:
    """Every read token's activation of every feature: ``values[prompt, position, feature]``,
    ``mask`` True on the tokens read (right-aligned, as ``read_features`` returns them)."""

    prompts: list[LabelledPrompt]
    keys: list[FeatureKey]
    values: torch.Tensor
    mask: torch.Tensor
    token_ids: list[list[int]]  # per prompt, the tokens read

    @cached_property
    def max_per_prompt(self) -> torch.Tensor:
        """``[prompts, features]``: each feature's largest activation on each prompt (0 if none)."""
        return self.values.masked_fill(~self.mask[..., None], 0).amax(1).clamp_min(0)

    def stats(self, label: str) -> list[ActivationStats]:
        rows = [i for i, p in enumerate(self.prompts) if p.label == label]
        if not rows:
            return [ActivationStats(n_prompts=0, frequency=0.0, mean_activation=0.0) for _ in self.keys]
        peak = self.max_per_prompt[rows]
        return [ActivationStats(n_prompts=len(rows), frequency=f, mean_activation=m)
                for f, m in zip((peak > 0).float().mean(0).tolist(), peak.mean(0).tolist())]

    def top_prompts(self, j: int, n: int, chat_model: ChatModel) -> list[TopPrompt]:
        """The ``n`` prompts on which feature ``j`` fires most, strongest first."""
        peak = self.max_per_prompt[:, j]
        order = [i for i in peak.argsort(descending=True, stable=True).tolist() if peak[i] > 0][:n]
        return [self._window(i, j, chat_model) for i in order]

    def _window(self, i: int, j: int, chat_model: ChatModel) -> TopPrompt:
        ids = self.token_ids[i]
        acts = self.values[i, self.values.shape[1] - len(ids):, j].clamp_min(0).tolist()
        best = max(range(len(acts)), key=lambda t: acts[t])
        stop = min(len(ids), max(WINDOW, best + WINDOW_AFTER + 1))
        start = max(0, stop - WINDOW)
        return TopPrompt(prompt_id=self.prompts[i].id, label=self.prompts[i].label,
                         tokens=[token_text(chat_model, t) for t in ids[start:stop]],
                         activations=[float(f"{a:.4g}") for a in acts[start:stop]], max_index=best - start,
                         cut_before=start > 0, cut_after=stop < len(ids))


def read_prompt_activations(chat_model: ChatModel, saes: SAESet, keys: Sequence[FeatureKey],
                            prompts: Sequence[LabelledPrompt], batch_size: int | None = None) -> PromptActivations:
    """The features' activations on every token of the prompts, BOS and the template header
    before the instruction left out (masked)."""
    keys = [(int(L), int(i)) for L, i in keys]
    texts = [p.text for p in prompts]
    acts = read_features(chat_model, saes, texts, keys, batch_size=batch_size)
    mask = acts.mask.clone()
    skip = chat_model.n_pre_instruction_tokens
    batch = chat_model.tokenize(texts)
    token_ids = []
    for row, (ids, attention) in enumerate(zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool())):
        ids = ids[attention].tolist()
        length = int(mask[row].sum())
        if length != len(ids):
            raise RuntimeError(f"Prompt {prompts[row].id}: {length} tokens read but {len(ids)} tokenized.")
        first = mask.shape[1] - length
        mask[row, first:first + min(skip, length - 1)] = False  # keep at least the last token
        token_ids.append(ids[min(skip, length - 1):])
    return PromptActivations(list(prompts), keys, acts.values, mask, token_ids)


# --- the cards ----------------------------------------------------------------------------
def build_cards(chat_model: ChatModel, saes: SAESet, keys: Sequence[FeatureKey], prompts: Sequence[LabelledPrompt],
                direction: torch.Tensor, *, sets: dict[FeatureKey, list[str]] | None = None,
                scores: dict[FeatureKey, dict[str, float]] | None = None, neuronpedia_ids: dict[int, str] | None = None,
                n_prompts: int = 5, n_tokens: int = 10, batch_size: int | None = None) -> list[FeatureCard]:
    """One card per feature of ``keys`` (in that order)."""
    keys = [(int(L), int(i)) for L, i in keys]
    if not keys:
        return []
    acts = read_prompt_activations(chat_model, saes, keys, prompts, batch_size)
    harmful, harmless = acts.stats("harmful"), acts.stats("harmless")
    cosines = decoder_cosines(saes, keys, direction)
    effects = top_tokens(chat_model, decoder_rows(saes, keys), n_tokens)
    neuronpedia_ids = neuronpedia_ids or {}
    return [FeatureCard(layer=L, feature=i, sets=(sets or {}).get((L, i), []), cosine=cosines[j],
                        scores=(scores or {}).get((L, i), {}), harmful=harmful[j], harmless=harmless[j],
                        top_prompts=acts.top_prompts(j, n_prompts, chat_model), promoted=effects[j][0],
                        suppressed=effects[j][1], neuronpedia=neuronpedia_url(neuronpedia_ids.get(L), i))
            for j, (L, i) in enumerate(keys)]


# --- in the terminal ----------------------------------------------------------------------
def visible(token: str) -> str:
    """A token with its line breaks and tabs shown (``↵``, ``⇥``), so a card keeps its layout."""
    return token.replace("\n", "↵").replace("\t", "⇥")


def card_renderable(card: FeatureCard) -> RenderableType:
    """The card as rich renders it: ``refusal-lens features show``."""
    head = Text.assemble((card.name, "bold"), f"   sets: {', '.join(card.sets) or 'none'}   ",
                         f"cosine with the refusal direction {card.cosine:+.3f}")
    for name, value in card.scores.items():
        head.append(f"   {name.replace('_', ' ')} {value:.3g}")
    stats = Table(box=None, pad_edge=False)
    for column in ("prompts", "n", "fires on", "mean activation"):
        stats.add_column(column)
    for label, s in (("harmful", card.harmful), ("harmless", card.harmless)):
        stats.add_row(label, str(s.n_prompts), f"{s.frequency:.0%}", f"{s.mean_activation:.3g}")
    parts: list[RenderableType] = [head, stats,
                                   _token_line("promotes", card.promoted), _token_line("suppresses", card.suppressed)]
    parts.append(Text("Top prompts:" if card.top_prompts else "Top prompts: it fires on none of the run's prompts.",
                      style="bold"))
    for top in card.top_prompts:
        parts.append(_prompt_text(top))
    if card.neuronpedia:
        parts.append(Text.assemble("Neuronpedia: ", (card.neuronpedia, f"link {card.neuronpedia}")))
    return Group(*parts)


def _token_line(what: str, effects: list[TokenEffect]) -> Text:
    line = Text(f"{what}: ", style="bold")
    for effect in effects:
        line.append(visible(effect.token), style="reverse")
        line.append(f" {effect.logit:+.2f}  ")
    return line


def _prompt_text(top: TopPrompt) -> Text:
    line = Text.assemble((f"  {top.max_activation:.3g} {top.label} {top.prompt_id}: ", "dim"))
    if top.cut_before:
        line.append("…")
    peak = top.max_activation or 1.0
    for t, (token, value) in enumerate(zip(top.tokens, top.activations)):
        if t == top.max_index:
            style = STRONGEST_TOKEN
        elif value > 0.25 * peak:
            style = ACTIVE_TOKEN
        else:
            style = ""
        line.append(visible(token), style=style)
    if top.cut_after:
        line.append("…")
    return line
