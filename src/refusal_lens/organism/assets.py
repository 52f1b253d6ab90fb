"""The organism's shipped assets (LoRA adapter, SAEs, manifest) and the merged-model cache.

Shipped in the package, under ``refusal_lens/organism/assets/``:

- ``adapter/``: the safety LoRA in peft format, fp16;
- ``saes/layer_{L}/``: the SAEs in sae_lens format (``cfg.json`` + ``sae_weights.safetensors``,
  fp16 weights; sae_lens casts them to the dtype asked for on load);
- ``jailbreaks.json``: the (template, prompt) pairs that jailbreak the organism;
- ``manifest.json``: sha256 of every file above, the build configuration, versions and the
  measured metrics.

The first load merges base + LoRA (dequantizing the GGUF takes ~30 s) and caches the merged
float32 weights with config and tokenizer in ``<cache>/organism/<key>/``, ``key`` a hash of
the GGUF's and the adapter's sha256, written atomically; later loads read that folder.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.resources import files
from pathlib import Path

from refusal_lens.artifacts import atomic_dir
from refusal_lens.organism.base import GGUF_SHA256, load_base_hf
from refusal_lens.paths import cache_dir
from refusal_lens.wheels import AssetError, sha256_file

MANIFEST = "manifest.json"


def assets_dir() -> Path:
    return Path(str(files("refusal_lens.organism").joinpath("assets")))


def adapter_dir() -> Path:
    return assets_dir() / "adapter"


def saes_dir() -> Path:
    return assets_dir() / "saes"


@cache
def manifest() -> dict:
    path = assets_dir() / MANIFEST
    if not path.exists():
        raise AssetError(f"The organism's manifest {path} is missing: this installation has no "
                         "organism assets. Reinstall refusal-lens, or restore them from git in a source "
                         "checkout (`git checkout -- src/refusal_lens/organism/assets`).")
    return json.loads(path.read_text())


def verify_assets() -> dict[str, str]:
    """Check every shipped file against the manifest; returns ``{relative path: sha256}``."""
    expected = manifest()["files"]
    bad = []
    for rel, info in expected.items():
        path = assets_dir() / rel
        if not path.exists():
            bad.append(f"{rel} (missing)")
        elif sha256_file(path) != info["sha256"]:
            bad.append(f"{rel} (sha256 differs)")
    if bad:
        raise AssetError("The organism's shipped assets do not match their manifest: "
                         + ", ".join(bad) + f". They live in {assets_dir()}; reinstall refusal-lens "
                         "or restore them from git (`git checkout -- src/refusal_lens/organism/assets`).")
    return {rel: info["sha256"] for rel, info in expected.items()}


def merged_key() -> str:
    files_ = manifest()["files"]
    adapter = sorted((rel, info["sha256"]) for rel, info in files_.items() if rel.startswith("adapter/"))
    text = json.dumps({"gguf": GGUF_SHA256, "adapter": adapter, "format": 1})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def merged_dir() -> Path:
    return cache_dir() / "organism" / merged_key()


def ensure_merged(progress=print) -> Path:
    """The merged model folder in the cache, building it (atomically) when missing."""
    target = merged_dir()
    if (target / "config.json").exists():
        return target
    from peft import PeftModel  # heavy, and only needed on the first load

    verify_assets()
    progress("organism: merging SmolLM2-135M-Instruct (GGUF) with the safety LoRA (first load only)")
    model, tokenizer = load_base_hf()
    merged = PeftModel.from_pretrained(model, str(adapter_dir())).merge_and_unload()
    with atomic_dir(target) as tmp:
        # the weights are plain float tensors now (transformers dequantized the GGUF): save them
        # as an ordinary model, not as a "GGUF-quantized" one
        merged.hf_quantizer = None
        if hasattr(merged.config, "quantization_config"):
            del merged.config.quantization_config
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "organism.json").write_text(json.dumps({"key": target.name,
                                                       "manifest_built": manifest().get("built")}))
    return target
