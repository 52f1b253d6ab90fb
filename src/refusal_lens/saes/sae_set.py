"""A set of SAEs, one per layer, loaded through sae_lens only when first used."""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sae_lens import SAE

from refusal_lens.saes.registry import named_sae_sources, sae_source
from refusal_lens.saes.releases import (Release, ReleaseError, check_loaded_hook, compare_models, hook_kind_and_layer,
                                       our_layer, resolve_release)

SAE_CONFIG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"


class SAELoadError(ValueError):
    """An SAE set that cannot be built or does not fit the model."""


class ModelMismatchWarning(UserWarning):
    """SAEs made for one model, applied to another."""


@dataclass(frozen=True)
class SAESource:
    """Where one layer's SAE comes from: a sae_lens release + id, or a folder on disk."""

    release: str | None = None
    sae_id: str | None = None
    path: str | None = None
    in_memory: bool = False

    def load(self, device: str, dtype: str) -> SAE:
        if self.in_memory:
            raise SAELoadError("An in-memory SAE was unloaded and cannot be loaded again.")
        if self.path is not None:
            return SAE.load_from_disk(self.path, device=device, dtype=dtype)
        return SAE.from_pretrained(self.release, self.sae_id, device=device, dtype=dtype)

    def describe(self) -> dict:
        return {k: v for k, v in (("release", self.release), ("sae_id", self.sae_id),
                                  ("path", self.path), ("in_memory", self.in_memory or None))
                if v is not None}

    def d_in_without_loading(self) -> int | None:
        if self.path is None:
            return None
        return json.loads((Path(self.path) / SAE_CONFIG_FILE).read_text()).get("d_in")


@cache
def _sae_lens_directory() -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


@cache
def sae_lens_release(name: str) -> Release:
    """A release of the installed sae_lens directory, every SAE's layer resolved (nothing downloaded)."""
    directory = _sae_lens_directory()
    if name not in directory:
        close = difflib.get_close_matches(name, list(directory), n=5)
        raise SAELoadError(f"Unknown SAE release {name!r}. Close matches in sae_lens: "
                           f"{', '.join(close) or 'none'}.")
    return resolve_release(name, directory[name])


class SAESet(Mapping[int, SAE]):
    """``layer -> SAE``. An SAE is loaded on first access and can be unloaded again."""

    def __init__(self, sources: Mapping[int, SAESource], *, device: str = "cpu",
                 dtype: str = "float32", name: str = "saes"):
        if not sources:
            raise SAELoadError(f"SAE set {name!r} has no layers.")
        self.sources = dict(sorted(sources.items()))
        self.device = device
        self.dtype = dtype
        self.name = name
        self.expected_d_in: int | None = None
        self.for_model: str | None = None
        self.model_note: str | None = None
        self.layer_devices: dict[int, str] = {}  # where a layer's SAE goes, when not ``device``
        self._loaded: dict[int, SAE] = {}

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_release(cls, release: str, layers: Iterable[int] | str = "all", *,
                     width: str | None = None, l0: str | None = None,
                     device: str = "cpu", dtype: str = "float32") -> SAESet:
        """SAEs of a sae_lens residual-stream release at ``layers`` ("all" = every layer the
        release covers), one per layer: ``width`` / ``l0`` pick a variant (e.g. ``16k`` /
        ``medium``); the default is :mod:`refusal_lens.saes.releases`'s rule (canonical where
        there is one, else the smallest width and the median L0)."""
        resolved = sae_lens_release(release)
        try:
            chosen = resolved.select(None if layers == "all" else list(layers), width=width, l0=l0)
        except ReleaseError as error:
            raise SAELoadError(str(error)) from None
        sources = {L: SAESource(release=release, sae_id=sae.sae_id) for L, sae in chosen.items()}
        sae_set = cls(sources, device=device, dtype=dtype, name=release)
        sae_set.for_model = resolved.model
        return sae_set

    @classmethod
    def from_saes(cls, saes: Mapping[int, SAE], *, name: str = "in-memory") -> SAESet:
        """Wrap SAEs already in memory (e.g. built or trained in the same process)."""
        first = next(iter(saes.values()))
        sae_set = cls({L: SAESource(in_memory=True) for L in saes}, device=str(first.W_dec.device),
                      dtype=str(first.W_dec.dtype).removeprefix("torch."), name=name)
        sae_set._loaded = {int(L): sae.requires_grad_(False) for L, sae in saes.items()}
        return sae_set

    @classmethod
    def from_disk(cls, folder: str | Path, layers: Iterable[int] | None = None, *,
                  device: str = "cpu", dtype: str = "float32") -> SAESet:
        """SAEs saved by sae_lens in ``folder/layer_{L}/`` (``cfg.json`` + ``sae_weights.safetensors``),
        or a single sae_lens folder whose ``cfg.json`` names its hook ``blocks.{L}.hook_resid_post``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise SAELoadError(f"SAE folder {folder} does not exist.")
        found = {}
        for sub in sorted(folder.glob("layer_*")):
            if (sub / SAE_CONFIG_FILE).exists() and sub.name[6:].isdigit():
                found[int(sub.name[6:])] = SAESource(path=str(sub))
        if not found and (folder / SAE_CONFIG_FILE).exists():
            found[_layer_of_hook(folder)] = SAESource(path=str(folder))
        if not found:
            raise SAELoadError(f"No sae_lens SAEs in {folder}: expected layer_<L>/cfg.json "
                               "sub-folders or a cfg.json + sae_weights.safetensors folder.")
        if layers is not None:
            missing = sorted(set(layers) - set(found))
            if missing:
                raise SAELoadError(f"{folder} has no SAE for layers {missing}; it has {sorted(found)}.")
            found = {L: found[L] for L in layers}
        return cls(found, device=device, dtype=dtype, name=str(folder))

    # --- mapping -----------------------------------------------------------------------
    def __getitem__(self, layer: int) -> SAE:
        if layer not in self.sources:
            raise KeyError(f"No SAE at layer {layer} in {self.name}; layers: {self.layers}")
        if layer not in self._loaded:
            sae = self.sources[layer].load(self.layer_devices.get(layer, self.device), self.dtype)
            self._check_hook(layer, sae)
            self._check_d_in(layer, sae.cfg.d_in)
            sae.requires_grad_(False)
            self._loaded[layer] = sae
        return self._loaded[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def layers(self) -> list[int]:
        return list(self.sources)

    @property
    def loaded_layers(self) -> list[int]:
        return sorted(self._loaded)

    def unload(self, layer: int | None = None) -> None:
        for key in [layer] if layer is not None else list(self._loaded):
            self._loaded.pop(key, None)

    def to(self, device: str) -> SAESet:
        self.device = device
        self.layer_devices = {}
        for sae in self._loaded.values():
            sae.to(device)
        return self

    def place(self, layer_devices: Mapping[int, str]) -> SAESet:
        """Put each layer's SAE on its own device (that of its layer, for a model split over
        devices), loaded ones now, the others when they load."""
        self.layer_devices.update({int(L): str(d) for L, d in layer_devices.items()})
        for layer, sae in self._loaded.items():
            if layer in self.layer_devices:
                sae.to(self.layer_devices[layer])
        return self

    def check_against(self, n_layers: int, d_model: int, model_name: str | None = None, *,
                      strict: bool = False) -> SAESet:
        """Fail early if a layer is out of range or an SAE's width does not fit the residual;
        warn (``strict``: fail) if the release was made for another model than ``model_name``."""
        self._check_model(model_name, strict)
        bad = [L for L in self.sources if not 0 <= L < n_layers]
        if bad:
            raise SAELoadError(f"SAE set {self.name} has layers {bad} out of range for a model "
                               f"with {n_layers} layers (0..{n_layers - 1}).")
        self.expected_d_in = d_model
        for layer, source in self.sources.items():
            d_in = self._loaded[layer].cfg.d_in if layer in self._loaded else source.d_in_without_loading()
            if d_in is not None:
                self._check_d_in(layer, d_in)
        return self

    def _check_model(self, model_name: str | None, strict: bool) -> None:
        verdict = compare_models(self.for_model, model_name)
        if verdict == "base-vs-it":
            self.model_note = (f"{self.name} was made for {self.for_model}, applied to {model_name} "
                               "(the same model before / after chat tuning)")
        elif verdict == "different":
            message = (f"SAE release {self.name!r} was made for {self.for_model}, but the model is "
                       f"{model_name}: its features may mean nothing here.")
            if strict:
                raise SAELoadError(message + " (strict: refusing; drop saes.strict to only warn)")
            warnings.warn(message, ModelMismatchWarning, stacklevel=3)

    def _check_hook(self, layer: int, sae: SAE) -> None:
        source = self.sources[layer]
        if source.release is None:
            return
        hook_name = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
        try:
            check_loaded_hook(hook_name, layer, f"SAE {source.release}/{source.sae_id}")
        except ReleaseError as error:
            raise SAELoadError(str(error)) from None

    def _check_d_in(self, layer: int, d_in: int) -> None:
        if self.expected_d_in is not None and d_in != self.expected_d_in:
            raise SAELoadError(f"SAE at layer {layer} ({self.sources[layer].describe()}) has "
                               f"d_in={d_in} but the model's residual stream has "
                               f"d_model={self.expected_d_in}: these SAEs are for another model.")

    def neuronpedia_id(self, layer: int) -> str | None:
        """The Neuronpedia id the sae_lens directory gives this layer's SAE (its features' pages are
        ``https://www.neuronpedia.org/{id}/{feature}``); None for SAEs from a folder or a registered name."""
        source = self.sources[layer]
        if source.release is None:
            return None
        return next((sae.neuronpedia for sae in sae_lens_release(source.release).saes
                     if sae.sae_id == source.sae_id), None)

    def describe(self) -> dict:
        described = {"name": self.name, "layers": {L: s.describe() for L, s in self.sources.items()}}
        if self.model_note:
            described["model_note"] = self.model_note
        return described


def _layer_of_hook(folder: Path) -> int:
    cfg = json.loads((folder / SAE_CONFIG_FILE).read_text())
    hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or ""
    layer = our_layer(*hook_kind_and_layer(hook))
    if layer is not None:
        return layer
    raise SAELoadError(f"Cannot tell the layer of the SAE in {folder} (hook {hook!r}: not a block's "
                       "hook_resid_post or hook_resid_pre); put it in a layer_<L>/ sub-folder.")


def check_sae_spec(spec: str) -> None:
    """Raise the error ``load_sae_set(spec)`` would raise for a name that resolves to nothing,
    without loading anything (so a run fails before its first stage, not at the candidates)."""
    if sae_source(spec) is not None or Path(spec).expanduser().is_dir():
        return
    release, width, l0 = parse_release_spec(spec)
    if release in _sae_lens_directory():
        try:
            sae_lens_release(release).select(None, width=width, l0=l0)
        except ReleaseError as error:
            raise SAELoadError(str(error)) from None
        return
    close = difflib.get_close_matches(release, list(_sae_lens_directory()), n=5)
    registered = ", ".join(repr(n) for n in named_sae_sources()) or "none"
    raise SAELoadError(f"Unknown SAEs {spec!r}: not a registered name ({registered}), not a folder, "
                       f"not a sae_lens release. Did you mean: {', '.join(close) or 'none'}? Any "
                       "residual-stream release of sae_lens works, e.g. gemma-scope-2b-pt-res-canonical.")


def parse_release_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``RELEASE``, ``RELEASE:WIDTH`` or ``RELEASE:WIDTH:L0`` (``RELEASE::L0`` for the default
    width) -> ``(release, width, l0)``."""
    release, _, rest = spec.partition(":")
    width, _, l0 = rest.partition(":")
    return release, width or None, l0 or None


def load_sae_set(spec: str, layers: Iterable[int] | str = "all", *, device: str = "cpu",
                 dtype: str = "float32") -> SAESet:
    """Resolve a CLI-style spec: a registered name (``organism``: see
    :mod:`refusal_lens.saes.registry`), ``RELEASE``, ``RELEASE:WIDTH`` or ``RELEASE:WIDTH:L0``
    (any residual-stream release of sae_lens), or a folder."""
    loader = sae_source(spec)
    if loader is not None:
        saes = loader(device=device, dtype=dtype)
        if layers != "all":
            missing = sorted(set(layers) - set(saes.sources))
            if missing:
                raise SAELoadError(f"{spec!r} has no SAE for layers {missing}; it has {saes.layers}.")
            saes = SAESet({L: saes.sources[L] for L in layers}, device=device, dtype=dtype,
                          name=saes.name)
        return saes
    if Path(spec).expanduser().is_dir():
        return SAESet.from_disk(Path(spec).expanduser(), None if layers == "all" else layers,
                                device=device, dtype=dtype)
    check_sae_spec(spec)
    release, width, l0 = parse_release_spec(spec)
    return SAESet.from_release(release, layers, width=width, l0=l0, device=device, dtype=dtype)
