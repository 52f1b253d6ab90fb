"""The analyses of [Y25] (METHOD.md §5) on pure inputs: a chat model, its SAEs, feature keys, prompts.

- ``pinned.py``: forward passes and greedy generation with features clamped and others pinned
  to their clean value (``interventions/pin.py``);
- ``categories.py``: each harm category's F*, common and specific features, their intervals,
  and the outcomes of clamping them;
- ``upstream.py``: harm features at earlier layers and the causal effect of editing them on the
  refusal features (and back);
- ``jailbreaks.py``: jailbreak pairs, judged; the relative drop of refusal and harm features;
  per-token attribution of the adversarial prompt;
- ``probes.py``: logistic probes with cross-validated regularisation, the dense layer chosen on
  validation, accuracy and AUROC with bootstrap intervals;
- ``controls.py``: random feature sets matched in layers.
"""
