"""What differs between chat-model families: refusal tokens, end-of-turn tokens, template quirks.

Like refusal_direction's ``model_utils``, a family is a small adapter, not a code path:
adding one means adding an entry to ``FAMILIES``. Where the decoder blocks, the final norm
and the unembedding sit is found from the model itself (``ChatModel.decoder``), so the
adapter holds only what the model's files do not say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

# Templates that write today's date (Llama-3.1's "Today Date", gpt-oss's "Current date") get
# this one, so prompts and results are reproducible.
PINNED_DATE = "26 Jul 2024"
_PINNED = date(2024, 7, 26)


_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(["'])(.*?)\1\s*\)""")


def pin_template_date(template: str) -> tuple[str, dict]:
    """``template`` with its ``strftime_now("FORMAT")`` calls answering :data:`PINNED_DATE`
    (transformers' ``strftime_now`` reads the clock, and lets no function in as a template
    variable), and the template variables that go with it."""
    formats = {match.group(2) for match in _STRFTIME_CALL.finditer(template)}
    if not formats:
        return template, {}
    pinned = "{% macro strftime_now(format) %}{{ pinned_dates[format] }}{% endmacro %}"
    return pinned + template, {"pinned_dates": {f: _PINNED.strftime(f) for f in sorted(formats)}}


@dataclass(frozen=True)
class Thinking:
    """How a reasoning model's template turns its thinking (a chain of thought before the
    answer) off, which is our default, or on.

    Off, the prompt ends where the answer starts, so the refusal score reads the answer's
    first token and the judges read the answer.
    """

    off_kwargs: dict = field(default_factory=dict)  # template variables that switch it off
    on_kwargs: dict = field(default_factory=dict)
    off_prefill: str = ""  # text put after the generation prompt to skip the thinking
    off_stop_tokens: tuple[str, ...] = ()  # end the answer only when thinking is off


@dataclass(frozen=True)
class ModelFamily:
    name: str
    # the text a refusal starts with right after the prompt (its first token is the refusal
    # token, taken in context: Mistral answers after a space, so " I")
    refusal_tokens: tuple[str, ...] = ("I",)
    end_of_turn_tokens: tuple[str, ...] = ()
    supports_system_role: bool = True
    template_kwargs: dict = field(default_factory=dict)
    thinking: Thinking | None = None
    # detection: the config's model_type and a string the chat template must contain
    model_types: tuple[str, ...] = ()
    template_marker: str = ""


FAMILIES: dict[str, ModelFamily] = {
    "gemma2": ModelFamily(
        name="gemma2",
        end_of_turn_tokens=("<end_of_turn>",),
        supports_system_role=False,
        model_types=("gemma", "gemma2"),
        template_marker="<start_of_turn>",
    ),
    # Gemma-3 folds a system turn into the first user turn; the multimodal wrapper
    # (Gemma3ForConditionalGeneration) keeps its decoder under ``model.language_model``
    "gemma3": ModelFamily(
        name="gemma3",
        end_of_turn_tokens=("<end_of_turn>",),
        model_types=("gemma3", "gemma3_text"),
        template_marker="<start_of_turn>",
    ),
    "llama3": ModelFamily(
        name="llama3",
        end_of_turn_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        template_kwargs={"date_string": PINNED_DATE},
        template_marker="<|start_header_id|>",
    ),
    # Qwen2.5's template writes a default system turn when none is given
    "qwen2.5": ModelFamily(
        name="qwen2.5",
        end_of_turn_tokens=("<|im_end|>", "<|endoftext|>"),
        model_types=("qwen2",),
        template_marker="<|im_start|>",
    ),
    "qwen3": ModelFamily(
        name="qwen3",
        end_of_turn_tokens=("<|im_end|>", "<|endoftext|>"),
        thinking=Thinking(off_kwargs={"enable_thinking": False}, on_kwargs={"enable_thinking": True}),
        model_types=("qwen3", "qwen3_moe"),
        template_marker="<|im_start|>",
    ),
    # Mistral-7B-Instruct: no generation prompt, the answer follows " [/INST]" after a space
    "mistral": ModelFamily(
        name="mistral",
        refusal_tokens=(" I",),
        end_of_turn_tokens=("</s>",),
        model_types=("mistral",),
        template_marker="[INST]",
    ),
    "phi3": ModelFamily(
        name="phi3",
        end_of_turn_tokens=("<|end|>", "<|endoftext|>"),
        model_types=("phi3",),
        template_marker="<|assistant|>",
    ),
    # gpt-oss (harmony format): thinking is the analysis channel; off, the prompt opens the
    # final channel, whose message may end with <|end|> as well as <|return|>
    "gpt-oss": ModelFamily(
        name="gpt-oss",
        end_of_turn_tokens=("<|return|>", "<|call|>"),
        thinking=Thinking(off_prefill="<|channel|>final<|message|>", off_stop_tokens=("<|end|>",)),
        model_types=("gpt_oss",),
        template_marker="<|channel|>",
    ),
    "chatml": ModelFamily(name="chatml", end_of_turn_tokens=("<|im_end|>",), template_marker="<|im_start|>"),
    "generic": ModelFamily(name="generic"),
}


def detect_family(model_type: str, vocab: dict[str, int], template: str | None = None) -> ModelFamily:
    """Pick the family from the architecture, the chat template and the special tokens.

    A family named by ``model_type`` needs its template marker too (when the template is
    known), so that e.g. a Mistral fine-tune with a ChatML template is treated as ChatML.
    """
    for family in FAMILIES.values():
        if model_type in family.model_types and (template is None or family.template_marker in template):
            return family
    if "<|eot_id|>" in vocab:
        return FAMILIES["llama3"]
    if "<|im_end|>" in vocab:
        return FAMILIES["chatml"]
    return FAMILIES["generic"]


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"Unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
