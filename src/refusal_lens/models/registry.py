"""Named chat models for :func:`~refusal_lens.models.load_chat_model`: ``organism``, and any
name a package registers (entry point group ``refusal_lens.models``, or
:func:`register_model_source`). A loader is called as ``loader(device=..., dtype=...)`` and
returns a :class:`~refusal_lens.models.ChatModel`."""

from __future__ import annotations

from collections.abc import Callable

from refusal_lens.named_sources import NamedSources

MODEL_SOURCES_GROUP = "refusal_lens.models"
# imported only when the name is used: this layer never imports the organism
BUILTIN_MODEL_SOURCES = {"organism": "refusal_lens.organism:load_organism"}

_sources = NamedSources(MODEL_SOURCES_GROUP, BUILTIN_MODEL_SOURCES)


def register_model_source(name: str, loader: Callable) -> None:
    """Make ``load_chat_model(name)`` (and ``--model name``) call ``loader(device=..., dtype=...)``."""
    _sources.register(name, loader)


def named_model_sources() -> list[str]:
    return _sources.names()


def model_source(name: str) -> Callable | None:
    """The loader registered as ``name``, or None when ``name`` is not a registered name."""
    return _sources.get(name)
