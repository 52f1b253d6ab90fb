"""How the evaluation's targeted methods pick their edits on validation, and the files they export."""

from refusal_lens.interventions import FeatureOp
from refusal_lens.pipeline.targeted import CandidateTried, TargetedChoice, choose, file_fields, scale_op


def tried(*rows):
    return [CandidateTried(scale=s, quantile=q, val_flip_rate=f, val_kl=kl) for s, q, f, kl in rows]


def test_the_lowest_kl_among_the_candidates_that_flip_enough():
    rows = tried((0, 1.0, 0.2, 0.0), (0, 0.9, 0.95, 0.3), (-1, 1.0, 1.0, 0.05), (-1, 0.9, 1.0, 0.5))
    assert choose(rows, min_flip=0.9) == 2
    assert choose(rows, min_flip=0.0) == 0
    assert choose(rows, min_flip=0.96) == 2


def test_when_none_flips_enough_the_one_flipping_most_then_the_lowest_kl():
    rows = tried((0, 1.0, 0.1, 0.0), (0, 0.9, 0.4, 0.2), (-1, 1.0, 0.4, 0.1), (-1, 0.9, 0.3, 0.5))
    assert choose(rows, min_flip=0.9) == 2
    ties = tried((0, None, 0.0, 0.0), (-1, None, 0.0, 0.0))
    assert choose(ties, min_flip=0.9) == 0  # the first of ties


def test_scale_zero_is_zero_ablation():
    assert scale_op(0) == FeatureOp("zero") and scale_op(-1) == FeatureOp("scale", -1.0)


def test_file_fields_of_each_targeted_method():
    row = tried((-1, 1.0, 0.5, 0.01))
    scoped = TargetedChoice(positions="post_instruction", condition=None, scale=-1, quantile=None, thresholds={},
                            tried=row)
    assert file_fields(scoped) == {"op": FeatureOp("scale", -1.0), "positions": "post_instruction"}
    above = TargetedChoice(positions="all", condition="feature_threshold", scale=0, quantile=0.99,
                           thresholds={"3:17": 2.5, "4:1": 0.5}, tried=row)
    assert file_fields(above) == {"op": FeatureOp("zero"), "positions": "all",
                                  "feature_thresholds": {(3, 17): 2.5, (4, 1): 0.5}}
    projection = TargetedChoice(positions="all", condition="direction_projection", scale=-3, quantile=0.9,
                                thresholds={"3": 1.5}, tried=row)
    assert file_fields(projection)["projection"] == {"direction": "../direction.safetensors", "thresholds": {3: 1.5}}
    assert file_fields(None) == {}
