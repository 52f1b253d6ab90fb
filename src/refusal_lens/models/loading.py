"""Load a chat model: a registered name (``organism``), a Hugging Face id, a local folder, or a GGUF file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal_lens import distributed
from refusal_lens.artifacts import stable_hash
from refusal_lens.models.chat_model import ChatModel, build_chat_model
from refusal_lens.models.families import get_family
from refusal_lens.models.registry import model_source, named_model_sources
from refusal_lens.paths import cache_dir

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(ValueError):
    """The model named could not be found or loaded."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``None``/``"auto"`` means float32 on CPU and bfloat16 on GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto") from None


def load_chat_model(
    name: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    family: str | None = None,
    refusal_tokens: list[str] | None = None,
    chat_template: str | None = None,
    system_prompt: str | None = None,
    thinking: bool = False,
) -> ChatModel:
    """Load ``name`` for analysis.

    ``name`` is a registered name (``organism``, the embedded demo model: see
    :mod:`refusal_lens.models.registry`), a path to a ``.gguf`` file, a local model folder, or
    a Hugging Face id. A registered name is loaded by its loader with ``device`` and ``dtype``
    (then ``family`` and ``thinking`` apply). ``family`` overrides the detected family (see
    :mod:`refusal_lens.models.families`); ``thinking`` lets a reasoning model (Qwen3, gpt-oss)
    think before it answers. ``device_map`` (e.g. ``"auto"``) spreads a model over several GPUs
    (accelerate's dispatch; what does not fit goes to the CPU, then to disk under the cache
    directory) and takes precedence over ``device``.
    """
    loader = model_source(name)
    if loader is not None:
        chat = loader(device=device, dtype=dtype)
        if family or thinking:  # a new ChatModel, so that the choice is checked like any other
            chat = replace(chat, family=get_family(family) if family else chat.family, thinking=thinking)
        return chat
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source, load_kwargs = _locate(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **load_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **_placement(name, device_map),
                                                     **load_kwargs)
    except OSError as error:
        raise ModelLoadError(
            f"Could not load model {name!r}: {error}\nGive a local folder, a .gguf file, a "
            f"registered name ({_registered()}), or a Hugging Face id that is cached or reachable "
            "(offline? set HF_HUB_OFFLINE=0 and check the network).") from error
    if device_map is None:
        model.to(device)
    if chat_template is not None:
        tokenizer.chat_template = _read_template(chat_template)
    return build_chat_model(
        model, tokenizer, name=name,
        family=get_family(family) if family else None,
        refusal_tokens=refusal_tokens, system_prompt=system_prompt, thinking=thinking)


def _placement(name: str, device_map: str | dict | None) -> dict:
    """``from_pretrained``'s arguments for ``device_map``: what fits no GPU goes to the CPU, then to
    disk under the cache; under torchrun each process spreads the model over its own GPUs only."""
    if device_map is None:
        return {}
    placement = {"device_map": device_map, "offload_folder": str(cache_dir() / "offload" / stable_hash(name))}
    if distributed.launched() and torch.cuda.is_available() and isinstance(device_map, str):
        placement["max_memory"] = {i: torch.cuda.get_device_properties(i).total_memory for i in distributed.my_gpus()}
    return placement


def _locate(name: str) -> tuple[str, dict]:
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist.")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a folder without config.json: not a Hugging Face "
                                 "model folder (save one with model.save_pretrained).")
        return str(path), {}
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a model: give a folder, a .gguf file or a hub id.")
    if name.count("/") != 1 or name.startswith(("/", ".")):
        raise ModelLoadError(
            f"Unknown model {name!r}: not a registered name ({_registered()}), not an existing folder or .gguf file, "
            "and not a Hugging Face id of the form 'org/name' (e.g. google/gemma-2-2b-it).")
    return name, {}


def _registered() -> str:
    return ", ".join(repr(n) for n in named_model_sources()) or "none"


def _read_template(template: str) -> str:
    path = Path(template)
    return path.read_text() if path.is_file() else template
