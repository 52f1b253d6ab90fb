"""Intervention files: feature sets (JSON) and directions (safetensors or JSON).

A feature-set file::

    {"saes": "organism",                       # or a release[:width[:l0]], or a folder
     "operation": {"kind": "zero"},            # or {"kind": "scale", "value": -3}, {"kind": "set", "value": 20}
     "features": [{"layer": 12, "feature": 345}, ...],
     "positions": "post_instruction",          # optional: all (default), prompt, post_instruction, generated
     "condition": {"kind": "feature_threshold"}}  # optional: each feature then has a "threshold"

or ``"condition": {"kind": "direction_projection", "direction": "../direction.safetensors",
"thresholds": {"14": 1.5, ...}}`` (the direction file's path relative to this file; one
threshold per edited layer).

With ``set``, a feature may carry its own ``"value"`` (``{"layer": 12, "feature": 345,
"value": 4.2}``); the operation's ``value`` may then be left out if every feature has one.

A direction file is a safetensors file with a ``direction`` tensor and ``layer`` in its
metadata, or JSON ``{"layer": L, "direction": [...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from refusal_lens.artifacts import write_json, write_tensors
from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp
from refusal_lens.interventions.positions import POSITION_SCOPES


class InterventionFileError(ValueError):
    """A feature-set or direction file that cannot be used."""


CONDITIONS = ("feature_threshold", "direction_projection")


@dataclass
class FeatureCondition:
    """Where a conditional edit acts (``conditional.py``): above per-feature thresholds, or where
    the projection on ``direction`` is above per-layer thresholds."""

    kind: str
    feature_thresholds: dict[FeatureKey, float] | None = None
    direction: torch.Tensor | None = None
    direction_file: str | None = None
    layer_thresholds: dict[int, float] | None = None


@dataclass
class FeatureSetFile:
    saes: str
    op: FeatureOp
    features: list[FeatureKey]
    positions: str = "all"
    condition: FeatureCondition | None = None


@dataclass
class DirectionFile:
    direction: torch.Tensor
    layer: int | None


def save_feature_set(path: str | Path, features: list[FeatureKey], *, saes: str,
                     op: FeatureOp | None = None, extra: dict | None = None, positions: str = "all",
                     feature_thresholds: Mapping[FeatureKey, float] | None = None,
                     projection: Mapping | None = None) -> Path:
    """``projection``: ``{"direction": path relative to this file, "thresholds": {layer: value}}``."""
    op = op or FeatureOp()
    own = dict(op.per_feature)
    entries = []
    for L, i in features:
        entry = {"layer": int(L), "feature": int(i)}
        if (int(L), int(i)) in own:
            entry["value"] = own[(int(L), int(i))]
        entries.append(entry)
    payload = {"saes": saes, "operation": {"kind": op.kind, "value": op.value}, "features": entries}
    if positions != "all":
        payload["positions"] = positions
    if feature_thresholds is not None:
        payload["condition"] = {"kind": "feature_threshold"}
        for entry in entries:
            entry["threshold"] = float(feature_thresholds[(entry["layer"], entry["feature"])])
    elif projection is not None:
        payload["condition"] = {"kind": "direction_projection", "direction": str(projection["direction"]),
                                "thresholds": {str(L): float(t) for L, t in projection["thresholds"].items()}}
    return write_json(path, {**payload, **(extra or {})})


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
    try:
        op = _operation(payload.get("operation", {"kind": "zero"}), payload["features"], features)
    except (AttributeError, TypeError, ValueError) as error:
        raise InterventionFileError(f"Bad 'operation' in {path}: {error}") from None
    positions = payload.get("positions", "all")
    if positions not in POSITION_SCOPES:
        raise InterventionFileError(f"Bad 'positions' {positions!r} in {path}: use one of {', '.join(POSITION_SCOPES)}.")
    condition = _read_condition(path, payload) if "condition" in payload else None
    return FeatureSetFile(saes=str(payload["saes"]), op=op, features=features, positions=positions,
                          condition=condition)


def _read_condition(path: Path, payload: dict) -> FeatureCondition:
    condition = payload["condition"]
    kind = condition.get("kind") if isinstance(condition, dict) else None
    if kind not in CONDITIONS:
        raise InterventionFileError(f"Bad 'condition' in {path}: its 'kind' must be one of {', '.join(CONDITIONS)}.")
    if kind == "feature_threshold":
        try:
            thresholds = {(int(e["layer"]), int(e["feature"])): float(e["threshold"]) for e in payload["features"]}
        except (KeyError, TypeError, ValueError):
            raise InterventionFileError(f"A 'feature_threshold' condition in {path} needs a numeric 'threshold' "
                                        "in every entry of 'features'.") from None
        return FeatureCondition(kind, feature_thresholds=thresholds)
    if "direction" not in condition or not isinstance(condition.get("thresholds"), dict):
        raise InterventionFileError(f"A 'direction_projection' condition in {path} needs 'direction' (a direction "
                                    "file, relative to this one) and 'thresholds' ({layer: value}).")
    direction_file = (path.parent / condition["direction"]).resolve()
    try:
        thresholds = {int(L): float(t) for L, t in condition["thresholds"].items()}
    except (TypeError, ValueError):
        raise InterventionFileError(f"The 'thresholds' of the condition in {path} must map layers to numbers.") from None
    return FeatureCondition(kind, direction=load_direction(direction_file).direction,
                            direction_file=str(direction_file), layer_thresholds=thresholds)


def _operation(operation: dict, entries: list[dict], features: list[FeatureKey]) -> FeatureOp:
    """The file's ``FeatureOp``: its kind and value, and the features' own values (``set`` only)."""
    kind = operation.get("kind", "zero")
    own = {key: float(entry["value"]) for key, entry in zip(features, entries) if "value" in entry}
    if own and kind != "set":
        raise ValueError(f"features carry their own 'value', which only the 'set' operation uses (it is {kind!r})")
    every_feature_has_one = kind == "set" and len(own) == len(features)
    if kind in ("scale", "set") and "value" not in operation and not every_feature_has_one:
        example = f"{{\"kind\": \"{kind}\", \"value\": {-3 if kind == 'scale' else 20}}}"
        raise ValueError(f"operation {kind!r} needs a value, e.g. {example}"
                         + (", or a 'value' on every feature" if kind == "set" else ""))
    value = float(operation.get("value", 0.0))
    return FeatureOp.set_each(own, value) if own else FeatureOp(kind, value)


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
