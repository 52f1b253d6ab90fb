"""Stage artifacts keyed by the hash of the configuration that made them.

Each stage writes into ``<run dir>/stages/<stage>-<key>/``; ``key`` hashes the config fields
the stage depends on and the keys of the stages it reads, so a changed config recomputes
exactly what it affects, an unchanged one reuses, and a killed run resumes at the first
stage without a ``done.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refusal_lens.artifacts import provenance, read_json, read_tensors, stable_hash, write_json, write_tensors


@dataclass
class StageDir:
    stage: str
    key: str
    path: Path

    @property
    def done(self) -> bool:
        return (self.path / "done.json").exists()

    def save_json(self, name: str, payload: Any, *, indent: int | None = 2) -> Path:
        return write_json(self.path / name, payload, indent=indent)

    def load_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> Path:
        return write_tensors(self.path / name, tensors)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return read_tensors(self.path / name)

    def mark_done(self, config_part: Any, cost: dict) -> None:
        write_json(self.path / "done.json", {"stage": self.stage, "key": self.key, "cost": cost,
                                             **provenance(config_part)})

    @property
    def cost(self) -> dict:
        return read_json(self.path / "done.json")["cost"]


class ArtifactStore:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        (self.run_dir / "stages").mkdir(parents=True, exist_ok=True)

    def stage(self, stage: str, config_part: Any, upstream: list[StageDir] = ()) -> StageDir:
        payload = {"config": config_part, "upstream": [u.key for u in upstream]}
        key = stable_hash(json.loads(json.dumps(payload, default=str)))
        path = self.run_dir / "stages" / f"{stage}-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return StageDir(stage, key, path)

    def clear(self) -> None:
        shutil.rmtree(self.run_dir / "stages", ignore_errors=True)
