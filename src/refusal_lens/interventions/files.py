"""Intervention files: feature sets (JSON) and directions (safetensors or JSON).

A feature-set file::

    {"saes": "organism",                       # or a release[:width[:l0]], or a folder
     "operation": {"kind": "zero"},            # or {"kind": "scale", "value": -3}, {"kind": "set", "value": 20}
     "features": [{"layer": 12, "feature": 345}, ...]}

A direction file is a safetensors file with a ``direction`` tensor and ``layer`` in its
metadata, or JSON ``{"layer": L, "direction": [...]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from refusal_lens.artifacts import write_json, write_tensors
from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp


class InterventionFileError(ValueError):
    """A feature-set or direction file that cannot be used."""


@dataclass
class FeatureSetFile:
    saes: str
    op: FeatureOp
    features: list[FeatureKey]


@dataclass
class DirectionFile:
    direction: torch.Tensor
    layer: int | None


def save_feature_set(path: str | Path, features: list[FeatureKey], *, saes: str,
                     op: FeatureOp | None = None, extra: dict | None = None) -> Path:
    op = op or FeatureOp()
    payload = {"saes": saes, "operation": op.describe(),
               "features": [{"layer": int(L), "feature": int(i)} for L, i in features], **(extra or {})}
    return write_json(path, payload)


def load_feature_set(path: str | Path) -> FeatureSetFile:
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise InterventionFileError(f"Feature file {path} does not exist.") from None
    except json.JSONDecodeError as error:
        raise InterventionFileError(f"Feature file {path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or "features" not in payload or "saes" not in payload:
        raise InterventionFileError(
            f"Feature file {path} must be an object with 'saes', 'features' (a list of "
            "{'layer': L, 'feature': i}) and optionally 'operation'.")
    try:
        features = [(int(item["layer"]), int(item["feature"])) for item in payload["features"]]
    except (KeyError, TypeError, ValueError):
        raise InterventionFileError(f"Every entry of 'features' in {path} needs integer "
                                    "'layer' and 'feature'.") from None
    if not features:
        raise InterventionFileError(f"Feature file {path} lists no features.")
    operation = payload.get("operation", {"kind": "zero"})
    try:
        kind = operation.get("kind", "zero")
        if kind in ("scale", "set") and "value" not in operation:
            raise ValueError(f"operation {kind!r} needs a value, e.g. {{\"kind\": \"{kind}\", \"value\": "
                             f"{-3 if kind == 'scale' else 20}}}")
        op = FeatureOp(kind, float(operation.get("value", 0.0)))
    except (AttributeError, ValueError) as error:
        raise InterventionFileError(f"Bad 'operation' in {path}: {error}") from None
    return FeatureSetFile(saes=str(payload["saes"]), op=op, features=features)


def save_direction(path: str | Path, direction: torch.Tensor, layer: int | None,
                   metadata: dict | None = None) -> Path:
    meta = {"layer": str(layer) if layer is not None else "", **(metadata or {})}
    return write_tensors(path, {"direction": direction.float()}, meta)


def load_direction(path: str | Path) -> DirectionFile:
    path = Path(path)
    if not path.exists():
        raise InterventionFileError(f"Direction file {path} does not exist.")
    if path.suffix == ".json":
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or "direction" not in payload:
            raise InterventionFileError(f"{path} must hold {{'layer': L, 'direction': [...]}}.")
        return DirectionFile(torch.tensor(payload["direction"], dtype=torch.float32), payload.get("layer"))
    if path.suffix != ".safetensors":
        raise InterventionFileError(f"Direction file {path} must be .safetensors or .json.")
    with safe_open(str(path), framework="pt") as f:
        if "direction" not in f.keys():
            raise InterventionFileError(f"{path} has no 'direction' tensor; it has {list(f.keys())}.")
        layer = (f.metadata() or {}).get("layer") or None
        return DirectionFile(f.get_tensor("direction").float(), int(layer) if layer else None)
