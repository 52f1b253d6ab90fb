"""CLI intervention specs: ``none``, ``direction:FILE``, ``addition:FILE``, ``features:FILE``.

``read_intervention_spec`` reads and checks the file before any model is loaded (bad input
fails early); ``build_interventions`` then makes the interventions for a loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass

from refusal_lens.interventions.conditional import ProjectionGatedFeatureIntervention, ThresholdFeatureIntervention
from refusal_lens.interventions.direction import ActivationAddition, DirectionalAblation
from refusal_lens.interventions.features import FeatureIntervention
from refusal_lens.interventions.files import (
    DirectionFile,
    FeatureSetFile,
    InterventionFileError,
    load_direction,
    load_feature_set,
)
from refusal_lens.interventions.positions import ScopedFeatureIntervention, check_scope
from refusal_lens.models import ChatModel
from refusal_lens.saes import SAESet, load_sae_set

KINDS = ("none", "direction:FILE", "addition:FILE", "features:FILE")


@dataclass
class InterventionSpec:
    kind: str
    path: str | None = None
    content: DirectionFile | FeatureSetFile | None = None


def read_intervention_spec(spec: str) -> InterventionSpec:
    kind, _, path = spec.partition(":")
    if kind == "none" and not path:
        return InterventionSpec("none")
    if kind not in ("direction", "addition", "features"):
        raise InterventionFileError(f"Unknown intervention {spec!r}: use one of {', '.join(KINDS)}.")
    if not path:
        raise InterventionFileError(f"Intervention {spec!r} needs a file: {kind}:FILE.")
    if kind == "features":
        return InterventionSpec(kind, path, load_feature_set(path))
    loaded = load_direction(path)
    if kind == "addition" and loaded.layer is None:
        raise InterventionFileError(f"{path} names no layer; activation addition needs one.")
    return InterventionSpec(kind, path, loaded)


def build_interventions(spec: InterventionSpec, chat_model: ChatModel, *, positions: str | None = None) -> list:
    """The spec's interventions; ``positions`` (a scope) overrides a feature-set file's own."""
    if spec.kind == "none":
        return []
    if spec.kind == "direction":
        return [DirectionalAblation(_checked(spec.content.direction, chat_model, spec.path))]
    if spec.kind == "addition":
        return [ActivationAddition(_checked(spec.content.direction, chat_model, spec.path), spec.content.layer)]
    features = spec.content
    layers = sorted({chat_model.check_layer(layer) for layer, _ in features.features})
    saes = load_sae_set(features.saes, layers, device=str(chat_model.device))
    saes.check_against(chat_model.n_layers, chat_model.d_model, chat_model.name)
    if features.condition is not None and features.condition.direction is not None:
        _checked(features.condition.direction, chat_model, features.condition.direction_file)
    return [feature_intervention(saes, features, positions)]


def feature_intervention(saes: SAESet, features: FeatureSetFile, positions: str | None = None) -> FeatureIntervention:
    """The edit a feature-set file describes: plain, scoped to positions, or conditional."""
    scope = check_scope(positions or features.positions)
    condition = features.condition
    if condition is None:
        if scope == "all":
            return FeatureIntervention(saes, features.features, features.op)
        return ScopedFeatureIntervention(saes, features.features, features.op, scope=scope)
    if condition.kind == "feature_threshold":
        return ThresholdFeatureIntervention(saes, features.features, features.op, scope=scope,
                                            thresholds=condition.feature_thresholds)
    return ProjectionGatedFeatureIntervention(saes, features.features, features.op, scope=scope,
                                              direction=condition.direction, thresholds=condition.layer_thresholds)


def parse_intervention(spec: str, chat_model: ChatModel, *, positions: str | None = None) -> list:
    return build_interventions(read_intervention_spec(spec), chat_model, positions=positions)


def _checked(direction, chat_model: ChatModel, path: str | None):
    if direction.shape != (chat_model.d_model,):
        raise InterventionFileError(f"The direction in {path} has shape {tuple(direction.shape)} but "
                                    f"{chat_model.name} has d_model={chat_model.d_model}.")
    return direction
