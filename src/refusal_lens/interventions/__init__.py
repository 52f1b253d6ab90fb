"""Interventions on the residual stream, applied with ``intervene(chat_model, ...)``."""

from refusal_lens.interventions.base import Intervention, intervene
from refusal_lens.interventions.direction import ActivationAddition, DirectionalAblation, project_out
from refusal_lens.interventions.feature_op import FeatureKey, FeatureOp, group_by_layer
from refusal_lens.interventions.features import FeatureIntervention
from refusal_lens.interventions.positions import POSITION_SCOPES, PositionScope, ScopedFeatureIntervention
from refusal_lens.interventions.conditional import ProjectionGatedFeatureIntervention, ThresholdFeatureIntervention
from refusal_lens.interventions.pin import CopyEditedTokens, PinnedFeatures, edited_rows_only, twin_batch
from refusal_lens.interventions.splice import SpliceFeatureIntervention
from refusal_lens.saes.slices import SparseSAESlice

__all__ = [
    "ActivationAddition", "DirectionalAblation", "FeatureIntervention", "FeatureKey", "FeatureOp",
    "Intervention", "SparseSAESlice", "SpliceFeatureIntervention", "group_by_layer", "intervene",
    "project_out",
    # features pinned to their clean values (pin.py)
    "CopyEditedTokens", "PinnedFeatures", "edited_rows_only", "twin_batch",
    # edits that touch less (positions.py, conditional.py)
    "POSITION_SCOPES", "PositionScope", "ProjectionGatedFeatureIntervention", "ScopedFeatureIntervention",
    "ThresholdFeatureIntervention",
]
