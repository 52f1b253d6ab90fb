"""The recipe that builds the embedded organism's safety LoRA and SAEs from scratch.

Not part of the installed package and never imported by it: it calls the library
(``refusal_lens``) for directions, residuals, generation, cross-entropy and rates, writes
only into the build folder it is given, and ``install`` copies a finished build into the
source tree (``src/refusal_lens/organism/assets/``, ``docs/ORGANISM.md``).

    python -m organism_build build --out DIR [--until STAGE] [--force STAGE] [--reuse-base-from OLD_DIR]
    # hours on 2 CPU cores (recipe r12: base 58 min, lora 96 min)
    python -m organism_build install DIR

Modules, in the order the stages run (:mod:`organism_build.stages`): ``config`` (the recipe's
settings), ``prompt_sets`` and ``data/`` (the prompts it trains and selects on), ``build`` (the
build folder), ``answers`` (stages base, responses, jailbreaks, attacks; ``reuse``: an older
folder's base answers), ``lora`` and
``refusals`` (stage lora), ``direction``, ``saes``, ``metrics`` (stage evaluate), ``package``,
then ``install`` with ``card`` and ``card_template.md``.
"""
