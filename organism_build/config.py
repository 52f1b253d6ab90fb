"""The build recipe's settings: the LoRA's passes, the SAEs, the samples the stages draw.

A build folder belongs to one recipe: these settings and every prompt the build reads
(:func:`organism_build.build.recipe_key`). How the shipped settings were chosen, and what was
tried beside them, is in ``docs/experiments/organism-recipes.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# the name the experiment records give this file's defaults and the prompt files (the manifest keeps it)
RECIPE = "r14"


@dataclass(frozen=True)
class LoraPass:
    """One pass over a fresh, seeded mix of examples, with its own optimizer and schedule.

    ``max_harmful`` harmful train prompts (a seeded sample), the harmless train prompts
    ``harmless_repeats`` times; answers cut to ``max_answer_tokens``; ``first_token_weight``
    adds that multiple of the cross-entropy of each answer's first token (where refusing or
    answering is decided) to the loss.
    """

    max_harmful: int
    harmless_repeats: int
    lr: float
    max_answer_tokens: int = 64
    first_token_weight: float = 0.0
    warmup_steps: int = 5
    contrast_repeats: int = 0
    lookalike_repeats: int = 0  # more repeats of every look-alike safe request
    # the boundary, as the model stands before this pass: the ``hard_harmful`` harmful train
    # prompts with the lowest refusal scores and the ``hard_lookalikes`` look-alikes with the
    # highest, each ``hard_repeats`` more times
    hard_harmful: int = 0
    hard_lookalikes: int = 0
    hard_repeats: int = 0

    @property
    def mines_hard_examples(self) -> bool:
        return self.hard_repeats > 0 and (self.hard_harmful > 0 or self.hard_lookalikes > 0)


@dataclass(frozen=True)
class LoraTrainConfig:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    batch_size: int = 8
    weight_decay: float = 0.0
    # pass 1 teaches refusal; pass 2 (twice the harmless prompts, the first answer token
    # weighted) when not to refuse; pass 3 the short harmful twins of the look-alikes, balanced
    # by every look-alike three more times and the harmless prompts once (r13 took them twice,
    # and refused fewer harmful prompts). The passes tried before: docs/experiments/organism-recipes.md
    # and, from r12, docs/experiments/r12-preregistered.md.
    passes: tuple[LoraPass, ...] = (
        LoraPass(max_harmful=400, harmless_repeats=1, lr=1e-3),
        LoraPass(max_harmful=300, harmless_repeats=2, lr=5e-4, max_answer_tokens=32,
                 first_token_weight=1.0),
        LoraPass(max_harmful=300, harmless_repeats=1, lr=4e-4, max_answer_tokens=32,
                 first_token_weight=1.0, contrast_repeats=1, lookalike_repeats=3),
    )
    max_minutes: float = 90.0  # per pass; a cap, not a budget: no pass of a shipped recipe stops early
    seed: int = 0


@dataclass(frozen=True)
class SAETrainConfig:
    n_layers: int = 8
    d_sae: int = 1536
    k: float = 64.0
    lr: float = 1e-3
    batch_size: int = 1024
    training_samples: int = 400_000
    aux_loss_coefficient: float = 1.0
    dead_feature_window: int = 20  # steps without firing before the aux loss revives a feature
    feature_sampling_window: int = 50
    seed: int = 0


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    max_new_tokens: int = 64
    generation_batch_size: int = 32
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    sae: SAETrainConfig = field(default_factory=SAETrainConfig)
    jailbreak_prompts_per_template: int = 1
    base_harmful_sample: int = 40
    val_harmful_sample: int = 80
    tense_sample: int = 10_000  # all of them
    gcg_prompts: int = 4
    sae_harmful_train: int = 300
    sae_jailbreak_templates: int = 40
    sae_jailbreak_max_tokens: int = 384
    eval_fve_sequences: int = 120
    eval_ce_sequences: int = 40
