"""A build folder: the outputs of one recipe's stages, and what every stage shares.

The folder belongs to one recipe (configuration + every prompt read, :func:`recipe_key`): a
changed recipe refuses to reuse another's folder, an interrupted one resumes. Nothing is
written anywhere else; ``python -m organism_build install`` copies a finished build into the
source tree.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel

from organism_build import prompt_sets as P
from organism_build.config import BuildConfig
from organism_build.everyday import everyday_heldout, everyday_source, everyday_train
from refusal_lens.artifacts import read_json, stable_hash, write_json
from refusal_lens.models import ChatModel, build_chat_model
from refusal_lens.organism.base import load_base_hf
from refusal_lens.paths import cache_dir


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_base_chat() -> ChatModel:
    model, tokenizer = load_base_hf()
    return build_chat_model(model, tokenizer, name="smollm2-135m-instruct (base)")


def load_tuned_chat(adapter_dir: Path) -> ChatModel:
    model, tokenizer = load_base_hf()
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return build_chat_model(merged, tokenizer, name="organism (build)")


def recipe_key(config: BuildConfig | dict, prompts) -> str:
    """What a build's outputs depend on: its configuration (or its ``asdict``, as a build folder's
    ``recipe.json`` keeps it) and every prompt it reads."""
    settings = config if isinstance(config, dict) else asdict(config)
    return stable_hash({"config": settings, "prompts": [[p.id, p.split, p.text] for p in prompts]})


# Harmless training prompts added after recipe r12 ran its ``base`` stage. ``base`` answers them
# in batches of their own, so that the other prompts are batched, and answered, exactly as in
# r12, and a build can take r12's answers to those (``--reuse-base-from``, ``reuse.py``).
ANSWERED_APART = (everyday_source("train_personal"),)


def default_folder(key: str) -> Path:
    return cache_dir() / "organism" / f"build-{key}"


class Build:
    """The stage outputs of one recipe (config + prompts) in ``folder`` (default
    ``<cache>/organism/build-<recipe key>``)."""

    def __init__(self, folder: Path | None = None, config: BuildConfig = BuildConfig()):
        self.config = config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.harmful = P.harmful()
        # what the build learns and selects on
        self.harmless = P.harmless() + P.lookalike_extra("train") + P.harmless_train_extra() + everyday_train()
        self.harmless_apart = [p for p in self.harmless if p.source in ANSWERED_APART]
        # measured only: answered in batches of their own (answers.generate_measured_only)
        self.heldout_lookalikes = P.lookalike_extra("val") + P.lookalike_extra("test")
        self.heldout_everyday = everyday_heldout("val") + everyday_heldout("test")
        # refusals taught in the last pass: the look-alikes' harmful twins (split by id) and the
        # training-only harmful requests
        self.contrast = P.contrast_harmful() + P.harmful_train_extra()
        self.key = recipe_key(config, self.prompts_read())
        self.folder = Path(folder) if folder is not None else default_folder(self.key)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._claim_folder()
        self.timings_path = self.folder / "timings.json"

    def prompts_read(self, leave_out: tuple[str, ...] = ()) -> list:
        """Every prompt the build reads, in the recipe key's order; ``leave_out``: sources to omit."""
        prompts = self.harmful + self.harmless + self.heldout_lookalikes + self.heldout_everyday + self.contrast
        return [p for p in prompts if p.source not in leave_out]

    def _claim_folder(self) -> None:
        recipe_path = self.folder / "recipe.json"
        if recipe_path.exists():
            made_by = read_json(recipe_path)["key"]
            if made_by != self.key:
                raise ValueError(
                    f"{self.folder} holds the outputs of another build recipe (key {made_by}, this one is"
                    f" {self.key}); its stages would be stale. Pass another build folder, or delete this one.")
            return
        write_json(recipe_path, {"key": self.key, "config": asdict(self.config)})

    def path(self, name: str) -> Path:
        return self.folder / name

    def record_time(self, stage: str, seconds: float) -> None:
        timings = read_json(self.timings_path) if self.timings_path.exists() else {}
        timings[stage] = round(seconds, 1)
        write_json(self.timings_path, timings)
