"""Which layer each SAE of a sae_lens release reads, from the release directory alone.

Pure functions over sae_lens's ``pretrained_saes.yaml`` (as
``get_pretrained_saes_directory()`` returns it); nothing is downloaded. Our layer ``L`` is the
output of decoder block ``L`` (METHOD.md §0): ``blocks.L.hook_resid_post`` is layer ``L`` and
``blocks.L.hook_resid_pre`` is layer ``L - 1`` (``hook_resid_pre`` of block 0 reads the
embeddings, which no block writes, so it cannot be used).

Default variant, one SAE per layer: the smallest width; then the ``canonical`` SAE where the
release has one; else the final SAEs (not ``_step_N`` training checkpoints); then the median
L0 (the lower median when there are two or an even number; variants ordered by their L0 where
the directory or the id gives one, ``small < medium < big``, else by name); a ``resid_post``
SAE wins over a ``resid_pre`` SAE for the same layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESID_POST, RESID_PRE = "resid_post", "resid_pre"
USABLE_KINDS = (RESID_POST, RESID_PRE)
WHY_NOT = {
    "resid_mid": "it reads the middle of a block (after attention, before the MLP), not a block's output",
    "attn": "it reads an attention output, not the residual stream",
    "mlp": "it reads an MLP output, not the residual stream",
    "transcoder": "it is a transcoder (MLP input to MLP output), not a residual-stream SAE",
    "embed": "it reads the token embeddings, which no block writes",
    "other": "its hook is not one refusal-lens can place on the residual stream",
}
# Loaders in sae_lens that give every SAE of a release the same kind of hook whatever its id.
CONVERSION_KINDS = {"goodfire": RESID_POST, "qwen_scope": RESID_POST, "deepseek_r1": RESID_POST,
                    "temporal": RESID_POST, "gemma_2_transcoder": "transcoder",
                    "mwhanna_transcoder": "transcoder", "mntss_clt_layer_transcoder": "transcoder"}
LLAMA_SCOPE_KINDS = {"r": RESID_POST, "a": "attn", "m": "mlp", "tc": "transcoder"}
L0_WORDS = {"small": 0, "medium": 1, "big": 2}
TUNING_WORDS = {"it", "instruct", "chat", "pt", "base"}

_HOOK_PATTERNS = [  # (regex over the id and path, kind); the first that matches decides
    (r"hook_embed|(^|/)embedding(/|$)", "embed"),
    (r"resid_pre", RESID_PRE),
    (r"resid_post|resid-post", RESID_POST),
    (r"resid_mid", "resid_mid"),
    (r"transcoder|(^|[/_])clt([/_]|$)", "transcoder"),
    (r"hook_z|attn|(^|[/_-])att([/_-]|$)", "attn"),
    (r"mlp", "mlp"),
]
_LAYER_PATTERNS = [r"blocks\.(\d+)\.", r"layers?[._]?(\d+)(?!\d)", r"^l(\d+)(?:r|a|m|tc)_"]
_WIDTH_PATTERNS = [r"width_(\d+[km]?)", r"_(\d+x)(?:_|$)", r"hook_resid_pre_(\d+)$"]


class ReleaseError(ValueError):
    """A release, or a variant of one, that refusal-lens cannot use."""


@dataclass(frozen=True)
class ReleaseSAE:
    """One SAE of a release: its id, what it reads, and at which of our layers."""

    sae_id: str
    path: str
    kind: str
    hook_layer: int | None  # the block number in its hook name
    width: str | None = None
    variant: str | None = None  # the L0 label: canonical, medium, 71, trainer_1, ...
    l0: float | None = None
    checkpoint: bool = False
    neuronpedia: str | None = None

    @property
    def layer(self) -> int | None:
        """Our layer (the output of that block), or None where this SAE cannot be used."""
        return our_layer(self.kind, self.hook_layer)

    @property
    def usable(self) -> bool:
        return self.layer is not None

    @property
    def why_not(self) -> str | None:
        if self.usable:
            return None
        if self.kind == RESID_PRE:
            return "it reads the input of block 0, the embeddings, which no block writes"
        if self.hook_layer is None and self.kind in USABLE_KINDS:
            return "its id and path name no layer"
        return WHY_NOT.get(self.kind, WHY_NOT["other"])


@dataclass(frozen=True)
class Release:
    """A release as refusal-lens sees it: every SAE, classified."""

    name: str
    model: str | None
    saes: tuple[ReleaseSAE, ...]
    repo_id: str | None = None

    @property
    def usable(self) -> list[ReleaseSAE]:
        return [s for s in self.saes if s.usable]

    @property
    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.usable})

    @property
    def widths(self) -> list[str]:
        return sorted({s.width for s in self.usable if s.width}, key=width_size)

    @property
    def variants(self) -> list[str]:
        return sorted({s.variant for s in self.usable if s.variant}, key=_natural_key)

    def refusal_reason(self) -> str | None:
        """Why the whole release cannot be used, or None when some SAEs can."""
        if self.usable:
            return None
        kinds = sorted({s.kind for s in self.saes})
        example = self.saes[0] if self.saes else None
        why = example.why_not if example else "it lists no SAEs"
        return (f"release {self.name!r} holds no residual-stream SAE ({', '.join(kinds)} SAEs; "
                f"e.g. {example.sae_id if example else '-'}: {why}). refusal-lens edits the "
                "residual stream, so it needs SAEs trained on a block's output (hook_resid_post, "
                "or hook_resid_pre of the next block).")

    def select(self, layers: list[int] | None = None, *, width: str | None = None,
               l0: str | None = None) -> dict[int, ReleaseSAE]:
        """One SAE per layer (``layers=None``: every layer the release covers); see the module
        docstring for the default when ``width`` / ``l0`` are not given."""
        reason = self.refusal_reason()
        if reason:
            raise ReleaseError(reason[0].upper() + reason[1:])
        candidates = self.usable
        if width is not None:
            candidates = [s for s in candidates if _same_label(s.width, width)]
            if not candidates:
                raise ReleaseError(f"Release {self.name!r} has no width {width!r}; widths: "
                                   f"{', '.join(self.widths) or 'one, unnamed'}.")
        if l0 is not None:
            candidates = [s for s in candidates if _same_label(s.variant, l0)]
            if not candidates:
                raise ReleaseError(f"Release {self.name!r} has no L0 variant {l0!r}"
                                   f"{f' at width {width}' if width else ''}; variants: "
                                   f"{', '.join(self.variants) or 'one, unnamed'}.")
        by_layer: dict[int, list[ReleaseSAE]] = {}
        for sae in candidates:
            by_layer.setdefault(sae.layer, []).append(sae)
        if layers is None:
            return {L: default_variant(by_layer[L]) for L in sorted(by_layer)}
        missing = [L for L in layers if L not in by_layer]
        if missing:
            raise ReleaseError(f"Release {self.name!r} has no SAE for layer(s) {missing}"
                               f"{_filters(width, l0)}; it has layers {sorted(by_layer)}.")
        return {int(L): default_variant(by_layer[L]) for L in layers}


def our_layer(kind: str, hook_layer: int | None) -> int | None:
    if hook_layer is None:
        return None
    if kind == RESID_POST:
        return hook_layer
    if kind == RESID_PRE and hook_layer >= 1:
        return hook_layer - 1
    return None


def hook_kind_and_layer(hook_name: str) -> tuple[str, int | None]:
    """``blocks.12.hook_resid_post`` -> ``("resid_post", 12)``."""
    return _kind_of(hook_name) or "other", _layer_of(hook_name)


def check_loaded_hook(hook_name: str | None, layer: int, where: str) -> None:
    """The loaded SAE's own hook name is the final word on its layer."""
    if not hook_name:
        return
    kind, hook_layer = hook_kind_and_layer(hook_name)
    if our_layer(kind, hook_layer) != layer:
        raise ReleaseError(f"{where} was resolved to layer {layer} from the sae_lens directory, "
                           f"but its config's hook is {hook_name!r} ({kind} of block {hook_layer}, "
                           f"our layer {our_layer(kind, hook_layer)}); refusing to edit the wrong layer.")


def resolve_release(name: str, entry: Any) -> Release:
    """Classify every SAE of ``entry`` (a sae_lens ``PretrainedSAELookup``)."""
    release_kind = _release_kind(name, entry)
    l0s = getattr(entry, "expected_l0", None) or {}
    neuronpedia = getattr(entry, "neuronpedia_id", None) or {}
    saes = tuple(_resolve_sae(sae_id, path, release_kind, l0s.get(sae_id), neuronpedia.get(sae_id))
                 for sae_id, path in entry.saes_map.items())
    return Release(name=name, model=entry.model, saes=saes, repo_id=entry.repo_id)


def resolve_all(directory: Mapping[str, Any]) -> dict[str, Release]:
    return {name: resolve_release(name, entry) for name, entry in directory.items()}


def default_variant(saes: list[ReleaseSAE]) -> ReleaseSAE:
    """The SAE the module docstring's rule picks among those of one layer."""
    best_kind = RESID_POST if any(s.kind == RESID_POST for s in saes) else RESID_PRE
    saes = [s for s in saes if s.kind == best_kind]
    smallest = min(width_size(s.width) for s in saes)
    saes = [s for s in saes if width_size(s.width) == smallest]
    canonical = [s for s in saes if s.variant == "canonical"]
    if canonical:
        return canonical[0]
    final = [s for s in saes if not s.checkpoint] or saes
    ordered = sorted(final, key=_l0_order)
    return ordered[(len(ordered) - 1) // 2]


def compare_models(release_model: str | None, loaded_model: str | None) -> str | None:
    """``same``, ``base-vs-it`` (one is the other's chat tuning), ``different`` or None
    (one of them unknown). Loose: organisation prefixes and case are ignored."""
    if not release_model or not loaded_model:
        return None
    a, b = _model_key(release_model), _model_key(loaded_model)
    if a == b:
        return "same"
    if _strip_tuning(a) == _strip_tuning(b):
        return "base-vs-it"
    return "different"


def width_size(width: str | None) -> float:
    """``16k`` -> 16384, ``1m`` -> 2**20, ``8x`` -> 8; None sorts as 0 (the only width)."""
    if not width:
        return 0
    number, unit = re.fullmatch(r"(\d+)([kmx]?)", width.lower()).groups()
    return int(number) * {"": 1, "x": 1, "k": 2**10, "m": 2**20}[unit]


# --- one SAE ----------------------------------------------------------------------------------
def _resolve_sae(sae_id: str, path: str, release_kind: str | None, l0: float | None,
                 neuronpedia: str | None) -> ReleaseSAE:
    text = f"{sae_id} {path}"
    kind = _kind_of(sae_id) or _kind_of(path) or _llama_scope_kind(sae_id) or release_kind or "other"
    hook_layer = _layer_of(sae_id)
    if hook_layer is None:
        hook_layer = _layer_of(path)
    variant, l0_from_id = _variant_of(sae_id)
    return ReleaseSAE(sae_id=sae_id, path=path, kind=kind, hook_layer=hook_layer,
                      width=_first_match(_WIDTH_PATTERNS, sae_id), variant=variant,
                      l0=l0 if l0 is not None else l0_from_id,
                      checkpoint=bool(re.search(r"_step_\d+", text)), neuronpedia=neuronpedia)


def _kind_of(text: str) -> str | None:
    for pattern, kind in _HOOK_PATTERNS:
        if re.search(pattern, text.lower()):
            return kind
    return None


def _llama_scope_kind(sae_id: str) -> str | None:
    match = re.match(r"^l\d+(r|a|m|tc)_", sae_id)
    return LLAMA_SCOPE_KINDS[match.group(1)] if match else None


def _release_kind(name: str, entry: Any) -> str | None:
    """What every SAE of the release reads, where its ids alone do not say."""
    if entry.conversion_func in CONVERSION_KINDS:
        return CONVERSION_KINDS[entry.conversion_func]
    words = set(re.split(r"[-_/.]", f"{name} {entry.repo_id or ''}".lower().replace(" ", "-")))
    if words & {"transcoder", "transcoders", "clt"}:
        return "transcoder"
    if words & {"att", "attn"}:
        return "attn"
    if "mlp" in words:
        return "mlp"
    if words & {"res", "resid"}:
        return RESID_POST
    return None


def _layer_of(text: str) -> int | None:
    found = _first_match(_LAYER_PATTERNS, text)
    return int(found) if found is not None else None


def _variant_of(sae_id: str) -> tuple[str | None, float | None]:
    if sae_id.endswith("/canonical") or sae_id == "canonical":
        return "canonical", None
    if match := re.search(r"average_l0_(\d+)", sae_id):
        return match.group(1), float(match.group(1))
    if match := re.search(r"l0_((?:small|medium|big)\w*)", sae_id):
        return match.group(1), None  # e.g. medium, medium_seed_1
    if match := re.search(r"(trainer_\d+(?:_step_\d+)?)", sae_id):
        return match.group(1), None
    if match := re.match(r"^l\d+(?:r|a|m|tc)_(?!\d+x$)(?:\d+x_)?(.+)$", sae_id):
        return match.group(1), None
    return None, None


def _first_match(patterns: list[str], text: str) -> str | None:
    for pattern in patterns:
        if match := re.search(pattern, text):
            return match.group(1)
    return None


def _l0_order(sae: ReleaseSAE) -> tuple:
    if sae.l0 is not None:
        return (0, sae.l0, "")
    word = (sae.variant or "").split("_")[0]
    if word in L0_WORDS:
        return (0, L0_WORDS[word], sae.variant)
    return (1, _natural_key(sae.variant or ""))


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _same_label(label: str | None, wanted: str) -> bool:
    return label is not None and label.lower() == str(wanted).lower().removeprefix("width_")


def _filters(width: str | None, l0: str | None) -> str:
    parts = [f"width {width}" if width else "", f"L0 {l0}" if l0 else ""]
    return f" ({', '.join(p for p in parts if p)})" if any(parts) else ""


# --- models -----------------------------------------------------------------------------------
def _model_key(name: str) -> str:
    name = name.lower().rstrip("/").split("/")[-1].replace("_", "-")
    return name.removeprefix("meta-")


def _strip_tuning(key: str) -> str:
    """``mistral-7b-instruct-v0.1`` -> ``mistral-7b``: the model before its chat tuning."""
    words = [w for w in key.split("-") if w not in TUNING_WORDS and not re.fullmatch(r"v\d+(\.\d+)*", w)]
    return "-".join(words)
