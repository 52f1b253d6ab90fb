"""Named sources: a short name such as ``organism`` resolved to the function that loads it.

Resolved the way transformers resolves model types: the project's own names are data, a
mapping of name → ``"module:attribute"`` imported only when the name is first used, so the
low layer that resolves ``organism`` (``models``, ``saes``) never imports the organism.
Other packages add names through Python entry points, e.g. in their ``pyproject.toml``::

    [project.entry-points."refusal_lens.models"]
    my-model = "my_package.loading:load_my_model"

or at run time with :meth:`NamedSources.register`. A name registered at run time wins over a
built-in one, and a built-in one over an entry point of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points


def import_target(target: str) -> Callable:
    """The object that ``"package.module:attribute"`` names."""
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)


class NamedSources:
    """Names → loaders of one kind (chat models, SAE sets)."""

    def __init__(self, entry_point_group: str, builtin: Mapping[str, str]):
        self.entry_point_group = entry_point_group
        self._targets: dict[str, Callable[[], Callable]] = {
            name: (lambda target=target: import_target(target)) for name, target in builtin.items()}
        self._loaders: dict[str, Callable] = {}
        self._entry_points_read = False

    def register(self, name: str, loader: Callable) -> None:
        self._loaders[name] = loader

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted({*self._targets, *self._loaders})

    def get(self, name: str) -> Callable | None:
        """The loader registered as ``name`` (imported now if it was only named), or None."""
        if name not in self._loaders:
            self._read_entry_points()
            if name not in self._targets:
                return None
            self._loaders[name] = self._targets[name]()
        return self._loaders[name]

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for point in entry_points(group=self.entry_point_group):
            self._targets.setdefault(point.name, point.load)
