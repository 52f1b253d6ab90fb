"""Prompt sets on the Hugging Face hub, loaded with ``datasets.load_dataset``.

Each set is a :class:`HubSpec`: the hub repository, its config and split, the field holding
the instruction, the category field, and an optional row filter. The same code loads a local
copy in the hub's layout: pass ``source=`` a folder (a clone / snapshot of the repository,
its ``README.md`` configs included) or a single data file (.csv, .tsv, .json, .jsonl,
.parquet); or set ``REFUSAL_LENS_HUB_MIRROR`` to a folder holding ``<owner>/<name>`` copies.

Offline (``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``), or when the hub cannot be
reached, a hub set without a local copy fails at once with a :class:`DataError` that names
the offline sets. With ``HF_HUB_OFFLINE=1`` a set already in the ``datasets`` cache still
loads.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from refusal_lens.data.errors import DataError
from refusal_lens.data.prompts import Prompt
from refusal_lens.data.splits import assign_split

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class HubSpec:
    repo: str
    split: str
    text_field: str
    config: str | None = None
    category_field: str | None = None
    keep: Callable[[Mapping[str, Any]], bool] | None = None
    meta_fields: tuple[str, ...] = ()
    load_kwargs: dict = field(default_factory=dict)
    text_getter: Callable[[Mapping[str, Any]], Any] | None = None

    def describe(self) -> str:
        parts = [self.repo]
        if self.config:
            parts.append(f"config {self.config}")
        parts.append(f"split {self.split}")
        parts.append(f"field {self.text_field}")
        return ", ".join(parts)


def hub_offline() -> bool:
    """True when the environment asks for no hub access."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _mirror(repo: str) -> Path | None:
    root = os.environ.get("REFUSAL_LENS_HUB_MIRROR")
    if root and (Path(root) / repo).exists():
        return Path(root) / repo
    return None


def _in_hf_cache(repo: str) -> bool:
    """Whether ``datasets`` or ``huggingface_hub`` holds a cached copy of ``repo``."""
    import datasets as hf_datasets
    from huggingface_hub import constants

    owner_name = repo.replace("/", "___")
    candidates = [Path(hf_datasets.config.HF_DATASETS_CACHE) / owner_name,
                  Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"]
    return any(c.exists() for c in candidates)


def _cache_kwargs() -> dict:
    """``cache_dir`` for ``datasets`` when ``REFUSAL_LENS_DATASETS_CACHE`` is set."""
    cache = os.environ.get("REFUSAL_LENS_DATASETS_CACHE")
    return {"cache_dir": cache} if cache else {}


def _read_rows(spec: HubSpec, source: Path | str | None, offline_hint: str) -> list[dict]:
    import datasets as hf_datasets

    kwargs = dict(spec.load_kwargs)
    if source is None:
        source = _mirror(spec.repo)
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"Local copy of {spec.repo} not found: {path}.")
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"Cannot read {path.name} as a copy of {spec.repo}; give a folder in the "
                                f"hub's layout or one of: {', '.join(_BUILDERS)}.")
            if path.suffix.lower() == ".tsv":
                kwargs.setdefault("delimiter", "\t")
            if builder != "csv":
                kwargs = {k: v for k, v in kwargs.items() if k not in ("delimiter", "keep_default_na")}
            ds = hf_datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs,
                                          **_cache_kwargs())
        else:
            ds = hf_datasets.load_dataset(str(path), spec.config, split=spec.split, **kwargs, **_cache_kwargs())
        return list(ds)
    if hub_offline() and not _in_hf_cache(spec.repo):
        raise DataError(f"{spec.repo} is a hub data set and this run is offline (HF_HUB_OFFLINE / "
                        f"HF_DATASETS_OFFLINE) with no cached copy. " + offline_hint)
    if not hub_offline() and not hub_reachable():
        raise DataError(f"{spec.repo} is on the Hugging Face hub, which cannot be reached from here. "
                        + offline_hint)
    kwargs.update(_cache_kwargs())
    try:
        ds = hf_datasets.load_dataset(spec.repo, spec.config, split=spec.split, **kwargs)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as error:
        if hub_offline():
            raise DataError(f"{spec.repo} is a hub data set and this run is offline (HF_HUB_OFFLINE / "
                            f"HF_DATASETS_OFFLINE) with no cached copy. " + offline_hint) from error
        raise DataError(f"Could not load {spec.repo} from the hub ({type(error).__name__}: {error}). It may "
                        f"be gated (accept its terms on the hub and log in). " + offline_hint) from error
    return list(ds)


def load_hub_set(name: str, spec: HubSpec, *, source: Path | str | None = None,
                 offline_hint: str = "") -> list[Prompt]:
    """Rows of a hub set (or its local copy) as prompts ``<name>:<row index>``."""
    rows = _read_rows(spec, source, offline_hint)
    if not rows:
        raise DataError(f"{spec.repo} ({spec.split}) has no rows.")
    columns = list(rows[0])
    if spec.text_getter is None and spec.text_field not in columns:
        raise DataError(f"{name}: the data has no column {spec.text_field!r} (expected the layout of "
                        f"{spec.repo}); its columns are: {', '.join(map(repr, columns))}.")
    prompts = []
    for index, row in enumerate(rows):
        if spec.keep is not None and not spec.keep(row):
            continue
        text = spec.text_getter(row) if spec.text_getter else row.get(spec.text_field)
        if not isinstance(text, str) or not text.strip():
            continue
        pid = f"{name}:{index}"
        category = row.get(spec.category_field) if spec.category_field else None
        meta = {k: row[k] for k in spec.meta_fields if k in row}
        prompts.append(Prompt(id=pid, text=text.strip(), source=name,
                              category=None if category in (None, "") else str(category),
                              split=assign_split(pid), meta=meta))
    if not prompts:
        raise DataError(f"{name}: no row of {spec.describe()} passed the filter.")
    return prompts


def _first_turn(row: Mapping[str, Any]) -> Any:
    turns = row.get("turns")
    return turns[0] if isinstance(turns, (list, tuple)) and turns else None


def _wildjailbreak(config: str, column: str, data_type: str) -> HubSpec:
    return HubSpec(repo="allenai/wildjailbreak", config=config, split="train", text_field=column,
                   keep=lambda row: row.get("data_type") == data_type,
                   meta_fields=("data_type",) + (("vanilla",) if column == "adversarial" else ()),
                   load_kwargs={"delimiter": "\t", "keep_default_na": False})


HUB_SPECS: dict[str, HubSpec] = {
    "advbench": HubSpec("walledai/AdvBench", "train", "prompt", meta_fields=("target",)),
    "jbb-harmful": HubSpec("JailbreakBench/JBB-Behaviors", "harmful", "Goal", config="behaviors",
                           category_field="Category", meta_fields=("Behavior", "Target", "Source")),
    "jbb-benign": HubSpec("JailbreakBench/JBB-Behaviors", "benign", "Goal", config="behaviors",
                          category_field="Category", meta_fields=("Behavior", "Target", "Source")),
    "harmbench-hub": HubSpec("walledai/HarmBench", "train", "prompt", config="standard",
                             category_field="category"),
    "strongreject": HubSpec("walledai/StrongREJECT", "train", "prompt", category_field="category",
                            meta_fields=("source",)),
    "sorry-bench": HubSpec("sorry-bench/sorry-bench-202503", "train", "turns", category_field="category",
                           keep=lambda row: row.get("prompt_style", "base") == "base",
                           text_getter=_first_turn, meta_fields=("question_id", "prompt_style")),
    "wildjailbreak-vanilla-harmful": _wildjailbreak("train", "vanilla", "vanilla_harmful"),
    "wildjailbreak-vanilla-benign": _wildjailbreak("train", "vanilla", "vanilla_benign"),
    "wildjailbreak-adversarial-harmful": _wildjailbreak("eval", "adversarial", "adversarial_harmful"),
    "wildjailbreak-adversarial-harmful-train": _wildjailbreak("train", "adversarial", "adversarial_harmful"),
    "wildjailbreak-adversarial-benign": _wildjailbreak("eval", "adversarial", "adversarial_benign"),
    "catqa": HubSpec("declare-lab/CategoricalHarmfulQA", "en", "Question", category_field="Category",
                     meta_fields=("Subcategory",)),
    "alpaca": HubSpec("tatsu-lab/alpaca", "train", "instruction",
                      keep=lambda row: not str(row.get("input") or "").strip()),
}
