"""How the evaluation's targeted methods pick their thresholds, and the files they export."""

from refusal_lens.pipeline.targeted import ConditionChoice, QuantileTried, choose_quantile, file_fields

QUANTILES = [1.0, 0.99, 0.9, 0.5]


def test_the_highest_quantile_that_flips_enough_is_chosen():
    scores = [(0.2, 0.0), (0.95, 0.01), (1.0, 0.1), (1.0, 0.5)]
    assert QUANTILES[choose_quantile(QUANTILES, scores, min_flip=0.9)] == 0.99
    assert QUANTILES[choose_quantile(QUANTILES, scores, min_flip=1.0)] == 0.9
    assert QUANTILES[choose_quantile(QUANTILES, scores, min_flip=0.0)] == 1.0


def test_when_none_flips_enough_the_one_flipping_most_is_chosen():
    scores = [(0.1, 0.0), (0.4, 0.01), (0.4, 0.1), (0.3, 0.5)]
    assert QUANTILES[choose_quantile(QUANTILES, scores, min_flip=0.9)] == 0.9  # the lowest quantile of the tie


def test_file_fields_of_each_targeted_method():
    tried = [QuantileTried(quantile=1.0, val_flip_rate=0.5, val_kl=0.01)]
    choices = {
        "minimal_shared_above_harmless": ConditionChoice(condition="feature_threshold", quantile=1.0, tried=tried,
                                                         thresholds={"3:17": 2.5, "4:1": 0.5}),
        "minimal_shared_high_projection": ConditionChoice(condition="direction_projection", quantile=1.0,
                                                          tried=tried, thresholds={"3": 1.5}),
    }
    assert file_fields("minimal_shared_post_instruction", choices) == {"positions": "post_instruction"}
    assert file_fields("minimal_shared_above_harmless", choices) == {
        "feature_thresholds": {(3, 17): 2.5, (4, 1): 0.5}}
    assert file_fields("minimal_shared_high_projection", choices) == {
        "projection": {"direction": "../direction.safetensors", "thresholds": {3: 1.5}}}
    assert file_fields("random_1", choices) == {}
