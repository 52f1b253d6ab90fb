"""Named SAE sets for :func:`~refusal_lens.saes.load_sae_set`: ``organism``, and any name a
package registers (entry point group ``refusal_lens.saes``, or :func:`register_sae_source`).
A loader is called as ``loader(device=..., dtype=...)`` and returns a
:class:`~refusal_lens.saes.SAESet` of every layer it has; ``load_sae_set`` keeps the layers asked for."""

from __future__ import annotations

from collections.abc import Callable

from refusal_lens.named_sources import NamedSources

SAE_SOURCES_GROUP = "refusal_lens.saes"
# imported only when the name is used: this layer never imports the organism
BUILTIN_SAE_SOURCES = {"organism": "refusal_lens.organism:organism_saes"}

_sources = NamedSources(SAE_SOURCES_GROUP, BUILTIN_SAE_SOURCES)


def register_sae_source(name: str, loader: Callable) -> None:
    """Make ``load_sae_set(name)`` (and ``--saes name``) call ``loader(device=..., dtype=...)``."""
    _sources.register(name, loader)


def named_sae_sources() -> list[str]:
    return _sources.names()


def sae_source(name: str) -> Callable | None:
    """The loader registered as ``name``, or None when ``name`` is not a registered name."""
    return _sources.get(name)
