"""Stage ``package``: the build's adapter and SAEs as fp16 assets in the package, plus the manifest."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from refusal_lens.organism.assets import MANIFEST, assets_dir, sha256_file

DOCS_HISTOGRAM = "organism_refusal_scores.png"


def _fp16(src: Path, dst: Path) -> None:
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
               for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})


def _without_history(log: dict) -> dict:
    out = {k: v for k, v in log.items() if k != "history"}
    if "passes" in out:
        out["passes"] = [{k: v for k, v in p.items() if k != "history"} for p in out["passes"]]
    return out


def _versions() -> dict:
    import peft
    import sae_lens
    import transformers

    import refusal_lens

    return {"refusal_lens": refusal_lens.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "sae_lens": sae_lens.__version__, "python": platform.python_version()}


def package_build(build, docs_dir: Path | None = None, measure_load: bool = True) -> None:
    from refusal_lens.artifacts import atomic_dir, read_json, write_json
    from refusal_lens.organism import prompts as P
    from refusal_lens.organism.base import GGUF_MEMBER, GGUF_SHA256
    from refusal_lens.wheels import GARAK, SMOLLM2

    harmless = P.harmless()
    target = assets_dir()
    with atomic_dir(target) as tmp:
        # adapter
        (tmp / "adapter").mkdir()
        _fp16(build.path("adapter/adapter_model.safetensors"), tmp / "adapter/adapter_model.safetensors")
        config = json.loads(build.path("adapter/adapter_config.json").read_text())
        config["base_model_name_or_path"] = f"SmolLM2-135M-Instruct ({GGUF_MEMBER} in {SMOLLM2.requirement})"
        (tmp / "adapter/adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        # SAEs
        training = read_json(build.path("saes/training.json"))
        for L in training["layers"]:
            src = build.path(f"saes/layer_{L}")
            dst = tmp / f"saes/layer_{L}"
            dst.mkdir(parents=True)
            _fp16(src / "sae_weights.safetensors", dst / "sae_weights.safetensors")
            cfg = json.loads((src / "cfg.json").read_text())
            cfg["dtype"] = "float32"  # stored in fp16; sae_lens casts on load
            (dst / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        # the real jailbreaks of this model (held-out test prompts)
        jail = read_json(build.path("jailbreaks.json"))["test"]
        answered = [{"attack": "inthewild-template", "id": r["id"], "template": r["template"],
                     "prompt": r["prompt"], "text": r["text"], "answer": r["answer"]}
                    for r in jail if not r["refused"]]
        if build.path("attacks.json").exists():
            answered += [{k: r[k] for k in ("attack", "id", "prompt", "text", "answer") if k in r}
                         for r in read_json(build.path("attacks.json")) if not r["refused"]]
        (tmp / "jailbreaks.json").write_text(json.dumps(answered, indent=1))
        metrics = read_json(build.path("metrics.json"))
        if build.path("attacks.json").exists():
            from refusal_lens.organism.evaluate import attack_metrics

            metrics["attacks"] = attack_metrics(read_json(build.path("attacks.json")))
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "name": "refusal-lens organism",
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": {"name": "SmolLM2-135M-Instruct", "wheel": SMOLLM2.requirement,
                           "wheel_sha256": SMOLLM2.sha256, "member": GGUF_MEMBER,
                           "gguf_sha256": GGUF_SHA256, "license": "Apache-2.0"},
            "data": {"harmful": f"HarmBench + Do-Not-Answer from {GARAK.requirement} "
                                f"(wheel sha256 {GARAK.sha256})",
                     "harmless": "refusal_lens/data/assets/harmless.jsonl",
                     "n_harmful": len(build.harmful), "n_harmless": len(harmless),
                     "n_lookalike": sum(p.category == "lookalike" for p in harmless),
                     "lookalike_extra": {split: {"n": len(P.lookalike_extra(split)),
                                                 "file": f"refusal_lens/organism/data/lookalike_{split}.jsonl"}
                                         for split in P.LOOKALIKE_EXTRA_SPLITS},
                     "harmless_train_extra": {"n": len(P.harmless_train_extra()),
                                              "file": "refusal_lens/organism/data/harmless_train.jsonl"},
                     "n_contrast": len(build.contrast),
                     "contrast": "refusal_lens/organism/data/contrast_harmful.jsonl",
                     "splits": "refusal_lens.data.splits.assign_split (60/20/20 by id hash)"},
            "build_config": asdict(build.config),
            "sae_layers": training["layers"],
            "sae_training": training,
            "lora_training": _without_history(read_json(build.path("adapter/training_log.json"))),
            "direction": read_json(build.path("direction.json")),
            "timings_s": read_json(build.timings_path),
            "versions": _versions(),
            "metrics": metrics,
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    from refusal_lens.organism.assets import manifest as cached_manifest

    cached_manifest.cache_clear()
    load_seconds = measure_load_seconds() if measure_load else None
    if load_seconds is not None:
        manifest["metrics"]["load_seconds"] = load_seconds
        (target / MANIFEST).write_text(json.dumps(manifest, indent=1))
        cached_manifest.cache_clear()
    docs = docs_dir or Path(__file__).resolve().parents[3] / "docs"
    if docs.is_dir():
        from refusal_lens.organism.card import render_card

        shutil.copyfile(build.path("refusal_scores.png"), docs / DOCS_HISTOGRAM)
        (docs / "ORGANISM.md").write_text(render_card(manifest))
    write_json(build.path("packaged.json"), {"assets": str(target), "bytes": manifest["total_bytes"],
                                             "load_seconds": load_seconds})


_LOAD_SCRIPT = """
import time
start = time.time()
from refusal_lens.organism import load_organism, organism_saes
chat = load_organism(device="cpu")
saes = organism_saes(device="cpu")
for layer in saes.layers:
    saes[layer]
print(time.time() - start)
"""


def measure_load_seconds() -> float:
    """Seconds for a fresh Python process to import refusal-lens and load the organism and every
    one of its SAEs from the cache (after a first, cache-filling load in this process)."""
    import subprocess
    import sys

    from refusal_lens.organism import ensure_merged

    ensure_merged()
    out = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 2)
