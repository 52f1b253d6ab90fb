"""Configuration: validated pydantic objects, loadable from TOML/JSON, overridable from the CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from refusal_lens.artifacts import stable_hash
from refusal_lens.models import FAMILIES, load_chat_model
from refusal_lens.saes import check_sae_spec, load_sae_set


class ConfigError(ValueError):
    """A configuration file or override that does not validate."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    def digest(self) -> str:
        """A short hash of every field: artifacts made under this config are keyed by it."""
        return stable_hash(self.model_dump(mode="json"))


class ModelConfig(StrictModel):
    """Which chat model, and how to load it."""

    name: str = Field("organism", description="'organism', a Hugging Face id, a model folder or a .gguf file")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on GPU")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ...; default: cuda when present")
    device_map: str | None = Field(None, description="e.g. 'auto' to spread the model over GPUs")
    refusal_tokens: list[str] | None = Field(
        None, description="texts a refusal starts with, each read as its first token right after the prompt; "
                          "default: the family's (\"I\"; Mistral \" I\")")
    chat_template: str | None = Field(None, description="a Jinja template or a file holding one")
    system_prompt: str | None = Field(None, description="a system prompt put before every instruction")
    family: str | None = Field(None, description="the chat family (gemma2, gemma3, llama3, qwen2.5, qwen3, mistral, "
                                                 "phi3, gpt-oss, chatml, generic); default: detected")
    thinking: bool = Field(False, description="let a reasoning model (Qwen3, gpt-oss) think before it answers; "
                                              "off: the prompt ends where the answer starts")

    def load(self):
        return load_chat_model(self.name, dtype=self.dtype, device=self.device, device_map=self.device_map,
                               family=self.family, refusal_tokens=self.refusal_tokens,
                               chat_template=self.chat_template, system_prompt=self.system_prompt,
                               thinking=self.thinking)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value):
        if value is not None and value not in FAMILIES:
            raise ValueError(f"unknown family {value!r}; known: {', '.join(FAMILIES)}")
        return value


class SAEConfig(StrictModel):
    """Which SAEs: 'organism', a sae_lens residual-stream release (``release[:width[:l0]]``) or a folder."""

    source: str = Field("organism", description="'organism', a sae_lens residual-stream release (release[:width[:l0]]) or a folder")
    layers: list[int] | Literal["all"] = Field("all", description="the layers whose SAEs are loaded")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the SAEs' weights")
    strict: bool = Field(False, description="fail (not just warn) when a release was made for another model")

    @field_validator("layers")
    @classmethod
    def _non_empty(cls, value):
        if value != "all" and not value:
            raise ValueError("layers must be 'all' or a non-empty list")
        return value

    def check_source(self) -> None:
        """Fail now, not stages later, when ``source`` names no SAEs."""
        check_sae_spec(self.source)

    def load(self, chat_model):
        saes = load_sae_set(self.source, self.layers, device=str(chat_model.device), dtype=self.dtype)
        if getattr(getattr(chat_model, "model", None), "hf_device_map", None):  # split over devices: each SAE beside its layer
            saes.place({L: str(chat_model.layer_device(L)) for L in saes.layers if 0 <= L < chat_model.n_layers})
        return saes.check_against(chat_model.n_layers, chat_model.d_model, chat_model.name, strict=self.strict)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"Cannot parse {path}: {error}") from None
    raise ConfigError(f"Config file {path} must be .toml or .json.")


def deep_update(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in; ``None`` overrides are ignored (flag not given),
    at any depth, so a section of overrides none of which was given leaves ``base`` as it is."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict):
            nested = deep_update(merged.get(key) if isinstance(merged.get(key), dict) else {}, value)
            if nested:
                merged[key] = nested
        elif value is not None:
            merged[key] = value
    return merged


def build_config(cls: type[StrictModel], path: str | Path | None = None,
                 overrides: dict | None = None) -> StrictModel:
    """Validate file contents (if any) with CLI overrides on top into ``cls``."""
    data = read_config_file(path) if path else {}
    data = deep_update(data, overrides or {})
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        where = f" in {path}" if path else ""
        raise ConfigError(f"Invalid configuration{where}:\n{error}") from None
