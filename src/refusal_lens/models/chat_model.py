"""A causal LM with its tokenizer, wrapped with everything METHOD.md §0 asks of prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from refusal_lens.models.families import ModelFamily, detect_family, pin_template_date

_INSTRUCTION_MARKER = "\x00INSTRUCTION\x00"
_PROBE_INSTRUCTION = "Hello there"  # a plain instruction, to see how the template's tokens fall in context


class ChatTemplateError(ValueError):
    """The tokenizer cannot format chat prompts the way this model expects."""


class PromptTooLongError(ValueError):
    """A prompt (plus the tokens to generate) does not fit the model's context."""


@dataclass
class ChatModel:
    """A chat model ready for refusal analysis.

    ``format_prompts`` applies the chat template to one user turn with the generation
    prompt; ``tokenize`` left-pads a batch with an attention mask and keeps BOS exactly
    once. The residual stream at layer ``L`` is the output of ``layers[L]``. ``thinking``
    (reasoning families only: Qwen3, gpt-oss) lets the model think before it answers; off
    by default, so the prompt ends where the answer starts.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    family: ModelFamily
    refusal_tokens: Sequence[str] | None = None
    extra_stop_tokens: Sequence[str] = ()
    system_prompt: str | None = None
    thinking: bool = False
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ChatTemplateError(
                f"The tokenizer of {self.name} has no chat template. Use an instruction-tuned "
                "model, or set one: pass --chat-template FILE (CLI) or chat_template=... to "
                "load_chat_model (a Jinja template, as in the model's tokenizer_config.json).")
        if self.system_prompt is not None and not self.family.supports_system_role:
            raise ChatTemplateError(
                f"{self.name} ({self.family.name}) has no system role; drop the system prompt "
                "or put its text in the user turn.")
        if self.thinking and self.family.thinking is None:
            raise ChatTemplateError(
                f"{self.name} ({self.family.name}) has no thinking mode to turn on; drop --thinking "
                "(thinking is a switch of reasoning families such as Qwen3 and gpt-oss).")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model.eval()

    # --- structure ---------------------------------------------------------------------
    @cached_property
    def decoder(self) -> nn.Module:
        """The text decoder: the module holding the blocks (``layers``) and the final norm,
        whatever wraps it (peft, a ForCausalLM head, a multimodal model's ``language_model``)."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        candidates = [getattr(base, "get_decoder", lambda: None)(), getattr(base, "model", None), base]
        for candidate in candidates:
            if isinstance(getattr(candidate, "layers", None), nn.ModuleList):
                return candidate
        raise TypeError(f"Cannot find the decoder layers of {type(base).__name__}")

    @cached_property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks: the residual stream at layer ``L`` is the output of ``layers[L]``."""
        return self.decoder.layers

    @cached_property
    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding."""
        for name in ("norm", "final_layernorm", "ln_f"):
            module = getattr(self.decoder, name, None)
            if isinstance(module, nn.Module):
                return module
        raise TypeError(f"Cannot find the final norm of {type(self.decoder).__name__}")

    @property
    def unembedding(self) -> nn.Module:
        """The output projection to the vocabulary (``lm_head``)."""
        return self.model.get_output_embeddings()

    @property
    def text_config(self):
        """The decoder's config (a multimodal model's ``text_config``)."""
        return self.model.config.get_text_config()

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.text_config.hidden_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the embeddings run on (with accelerate's offloading, the
        execution device of their hook, their weights being on ``meta`` between calls)."""
        return module_device(self.model.get_input_embeddings())

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model runs on: the inputs' and its blocks' (one, unless split)."""
        return list(dict.fromkeys([self.device, *(module_device(block) for block in self.layers)]))

    def layer_device(self, layer: int) -> torch.device:
        """The device block ``layer`` runs on (several, for a model split by ``device_map``)."""
        return module_device(self.layers[self.check_layer(layer)])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def context_length(self) -> int | None:
        return getattr(self.text_config, "max_position_embeddings", None)

    def check_layer(self, layer: int) -> int:
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"Layer {layer} is out of range: {self.name} has {self.n_layers} "
                             f"layers (0..{self.n_layers - 1}).")
        return layer % self.n_layers

    # --- tokens ------------------------------------------------------------------------
    def _first_token_in_context(self, text: str) -> int:
        """The first token of ``text`` written right after a prompt, as the model would
        produce it (``I`` after a newline is not ``▁I`` in a SentencePiece vocabulary)."""
        prompt = "".join(self._probe_prompt)
        before, after = self._encode(prompt), self._encode(prompt + text)
        if len(after) > len(before) and after[:len(before)] == before:
            return after[len(before)]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"Refusal token {text!r} encodes to no token for {self.name}")
        return ids[0]

    @cached_property
    def refusal_token_ids(self) -> list[int]:
        tokens = self.refusal_tokens or self.family.refusal_tokens
        return sorted({self._first_token_in_context(t) for t in tokens})

    @cached_property
    def stop_token_ids(self) -> list[int]:
        """EOS and every end-of-turn token this model knows."""
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(value)
        vocab = self.tokenizer.get_vocab()
        thinking_off_stops = self.family.thinking.off_stop_tokens if self.family.thinking and not self.thinking else ()
        for token in (*self.family.end_of_turn_tokens, *thinking_off_stops, *self.extra_stop_tokens):
            if token in vocab:
                ids.add(vocab[token])
        return sorted(ids)

    # --- prompts -----------------------------------------------------------------------
    def _messages(self, instruction: str) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": instruction})
        return messages

    def format_prompts(self, instructions: Sequence[str]) -> list[str]:
        """Each instruction as one user turn, with the generation prompt (and, thinking off,
        whatever skips the thinking), as text. A template that writes today's date gets
        :data:`~refusal_lens.models.families.PINNED_DATE`."""
        template, kwargs = pin_template_date(self._template)
        kwargs.update(self.family.template_kwargs)
        prefill = ""
        if self.family.thinking is not None:
            switch = self.family.thinking
            kwargs.update(switch.on_kwargs if self.thinking else switch.off_kwargs)
            prefill = "" if self.thinking else switch.off_prefill
        return [
            self.tokenizer.apply_chat_template(
                self._messages(text), chat_template=template, tokenize=False, add_generation_prompt=True,
                **kwargs) + prefill
            for text in instructions
        ]

    @property
    def _template(self) -> str:
        template = self.tokenizer.chat_template
        if isinstance(template, dict):  # named templates: transformers uses "default"
            template = template.get("default") or next(iter(template.values()))
        return template

    @cached_property
    def _template_parts(self) -> tuple[str, str]:
        """The prompt's text before and after the instruction."""
        before, after = self.format_prompts([_INSTRUCTION_MARKER])[0].split(_INSTRUCTION_MARKER)
        return before, after

    @property
    def _probe_prompt(self) -> tuple[str, str, str]:
        """A prompt around a plain instruction, to see how the template's tokens fall in context."""
        before, after = self._template_parts
        return before, _PROBE_INSTRUCTION, after

    @property
    def post_instruction_text(self) -> str:
        """The template text after the user's instruction (e.g. ``<end_of_turn>\\n<start_of_turn>model\\n``)."""
        return self._template_parts[1]

    @cached_property
    def n_post_instruction_tokens(self) -> int:
        """Tokens after the instruction, counted in context (a SentencePiece vocabulary may
        write the template text alone with a different first token)."""
        before, instruction, after = self._probe_prompt
        head, whole = self._encode(before + instruction), self._encode(before + instruction + after)
        if whole[:len(head)] == head:
            return len(whole) - len(head)
        return len(self.tokenizer.encode(after, add_special_tokens=False))

    @cached_property
    def n_pre_instruction_tokens(self) -> int:
        """Tokens the template puts before the user's instruction: BOS, any system header
        (Llama-3.1's date lines), the user-turn header. Counted in context: the tokens the
        header alone and the whole prompt share (Mistral's "[INST] " ends in a "▁" that the
        instruction's first token absorbs)."""
        before, instruction, after = self._probe_prompt
        head, whole = self._encode(before), self._encode(before + instruction + after)
        return next((i for i, (a, b) in enumerate(zip(head, whole)) if a != b), min(len(head), len(whole)))

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None and self._tokenizer_adds_bos and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    @cached_property
    def _tokenizer_adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer.encode("a", add_special_tokens=True)
        return bos is not None and bool(probe) and probe[0] == bos

    def tokenize(self, instructions: Sequence[str], *, max_new_tokens: int = 0) -> BatchEncoding:
        """Left-padded ``input_ids`` and ``attention_mask`` for a batch of instructions."""
        if len(instructions) == 0:
            raise ValueError("No instructions to tokenize: the prompt set is empty.")
        encoded = [self._encode(text) for text in self.format_prompts(instructions)]
        self._check_length(encoded, instructions, max_new_tokens)
        return self.pad(encoded)

    def pad(self, encoded: Sequence[Sequence[int]]) -> BatchEncoding:
        width = max(len(ids) for ids in encoded)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if ids:
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention_mask[row, width - len(ids):] = 1
        return BatchEncoding({"input_ids": input_ids.to(self.device),
                              "attention_mask": attention_mask.to(self.device)})

    def _check_length(self, encoded: Sequence[Sequence[int]], instructions: Sequence[str],
                      max_new_tokens: int) -> None:
        limit = self.context_length
        if limit is None:
            return
        for ids, text in zip(encoded, instructions):
            if len(ids) + max_new_tokens > limit:
                raise PromptTooLongError(
                    f"Prompt of {len(ids)} tokens (+{max_new_tokens} to generate) exceeds "
                    f"{self.name}'s context of {limit} tokens: {text[:80]!r}... Shorten it, "
                    "lower --max-new-tokens, or drop it from the set.")


def build_chat_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                     name: str | None = None, family: ModelFamily | None = None,
                     **kwargs) -> ChatModel:
    """Wrap an already loaded HF model + tokenizer, detecting the family if not given."""
    family = family or detect_family(model.config.model_type, tokenizer.get_vocab(),
                                     str(getattr(tokenizer, "chat_template", None) or ""))
    return ChatModel(model=model, tokenizer=tokenizer,
                     name=name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
                     family=family, **kwargs)


def module_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's execution device when it has one
    (dispatched or offloaded), else its first parameter's (the CPU when it has none)."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, so a prompt scores the same alone or in a batch."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
