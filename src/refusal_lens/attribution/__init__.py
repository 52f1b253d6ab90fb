"""Attribution of refusal to SAE features (METHOD.md §5): LA-IG per layer, attribution
patching, and the CosSim+AP feature sets with their baselines.

- ``metric.py``: ``m = logit[jailbreak] - logit[refusal]`` and the cached forward passes;
- ``gradients.py``: mean ``∂m/∂x_L`` over the α steps from the cached block-L output, and
  attribution patching's gradients at every layer from one backward pass;
- ``decomposition.py``: the gradient split into the SAE features that changed and the error term;
- ``compute.py``: ``attribute``, batching it all over prompts and layers;
- ``result.py``: ``AttributionResult`` and per-feature scores;
- ``feature_sets.py``: CosSim+AP, cosine alone, attribution alone, activation difference.
"""

from refusal_lens.attribution.compute import attribute
from refusal_lens.attribution.decomposition import check_sae
from refusal_lens.attribution.feature_sets import (DEFAULT_K, activation_difference_features,
                                                   attribution_features, cosine_features, cossim_ap_features,
                                                   firing_means, mean_activations)
from refusal_lens.attribution.gradients import interpolation_points
from refusal_lens.attribution.metric import jailbreak_tokens, metric_from_logits
from refusal_lens.attribution.result import (AttributionResult, FeatureScores, LayerAttribution, ScoredFeature,
                                             feature_scores)

__all__ = [
    "DEFAULT_K", "AttributionResult", "FeatureScores", "LayerAttribution", "ScoredFeature",
    "activation_difference_features", "attribute", "attribution_features", "check_sae", "cosine_features",
    "cossim_ap_features", "feature_scores", "firing_means", "interpolation_points", "jailbreak_tokens",
    "mean_activations", "metric_from_logits",
]
