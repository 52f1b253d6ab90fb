"""Stage: a card for every feature the run reports, so a reader can see what each one is.

The features come from the stages in ``SOURCES``: the minimal sets of the search (the
shared set as the evaluation's `minimal_shared` has it, its union over seeds, and each
prompt's own set), the top interacting features of the
factorization machine (the evaluation's `interaction_only` set), and any stage added there
(adding one is one ``FeatureSource`` row naming the stage and how its result lists its
feature sets). Each card (``refusal_lens.feature_cards``) is read on the run's discovery
prompts (train, val and FM splits of both classes, never the held-out evaluation prompts).
It runs last, after every stage whose features it describes; ``refusal-lens features show
RUN_DIR LAYER:FEATURE`` prints a card in the terminal.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from refusal_lens.feature_cards import FeatureCard, LabelledPrompt, build_cards, visible
from refusal_lens.interventions import FeatureKey
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.direction import load_vector
from refusal_lens.pipeline.interactions import Interactions
from refusal_lens.pipeline.prompt_sets import PromptSets
from refusal_lens.pipeline.search import MinimalSets
from refusal_lens.pipeline.stage import Inputs, RunContext, Stage
from refusal_lens.pipeline.store import StageDir
from refusal_lens.report import Cell, ReportSection, data, table

DISCOVERY = {"harmful": ("harmful_train", "harmful_val", "harmful_fm"),
             "harmless": ("harmless_train", "harmless_val", "harmless_fm")}


@dataclass(frozen=True)
class FeatureSource:
    """A stage whose result names features worth a card: its feature sets by name, and any
    per-feature numbers to show beside them (e.g. ``{"attribution": {key: value}}``)."""

    stage: str
    sets: Callable[[Any, RunConfig], dict[str, Sequence[FeatureKey]]]
    scores: Callable[[Any, RunConfig], dict[str, dict[FeatureKey, float]]] = field(default=lambda result, config: {})


def _minimal_sets(result: MinimalSets, config: RunConfig) -> dict[str, list[FeatureKey]]:
    own = sorted({tuple(f) for s in result.per_prompt.values() for f in s.intersection})
    return {"minimal_shared": result.minimal_shared(), "minimal_shared_union": result.shared.union,
            "minimal_per_prompt": own}


def _top_interactions(result: Interactions, config: RunConfig) -> list:
    return result.ranking[:max(config.interactions.top_k)]


def _attribution_scores(result, config: RunConfig) -> dict[str, dict[FeatureKey, float]]:
    return {"attribution": {(s.layer, s.feature): s.score for s in result.scores.get("attribution", [])}}


SOURCES = (
    FeatureSource("attribution", lambda result, config: {f"{name}_top": list(features)
                                                         for name, features in result.feature_sets.items()},
                  _attribution_scores),
    FeatureSource("search", _minimal_sets),
    FeatureSource("interactions",
                  lambda r, c: {"interaction_top": [(x.layer, x.feature) for x in _top_interactions(r, c)]},
                  lambda r, c: {"interaction_strength": {(x.layer, x.feature): x.strength
                                                         for x in _top_interactions(r, c)}}),
)


class FeatureCards(BaseModel):
    sets: dict[str, list[FeatureKey]] = Field(description="feature set name → its features (the sets of the "
                                                          "stages in `pipeline/cards.py`'s `SOURCES`)")
    n_harmful: int = Field(description="harmful discovery prompts the cards were read on (train, val and FM "
                                       "splits, each once)")
    n_harmless: int = Field(description="harmless discovery prompts")
    cards: list[FeatureCard] = Field(description="one card per feature of any set, by layer then index")

    def card(self, key: FeatureKey) -> FeatureCard:
        """The card of ``key``; a KeyError naming a few features that have one."""
        for card in self.cards:
            if card.key == tuple(key):
                return card
        shown = ", ".join(f"{c.layer}:{c.feature}" for c in self.cards[:8])
        raise KeyError(f"Feature {key[0]}:{key[1]} is not among the {len(self.cards)} features this run reports"
                       + (f" (e.g. {shown}{' ...' if len(self.cards) > 8 else ''})." if shown else "."))


def collect(inputs: Inputs, config: RunConfig) -> tuple[dict[str, list[FeatureKey]], dict[FeatureKey, dict]]:
    """Every source's feature sets (name → sorted features) and per-feature scores."""
    sets: dict[str, list[FeatureKey]] = {}
    scores: dict[FeatureKey, dict[str, float]] = {}
    for source in SOURCES:
        result = inputs[source.stage]
        for name, features in source.sets(result, config).items():
            sets[name] = sorted({(int(L), int(i)) for L, i in features})
        for name, values in source.scores(result, config).items():
            for key, value in values.items():
                scores.setdefault((int(key[0]), int(key[1])), {})[name] = float(value)
    return sets, scores


def discovery_prompts(sets: PromptSets) -> list[LabelledPrompt]:
    prompts, seen = [], set()
    for label, roles in DISCOVERY.items():
        for role in roles:
            for p in getattr(sets, role):
                if (label, p.id) not in seen:
                    seen.add((label, p.id))
                    prompts.append(LabelledPrompt(p.id, p.text, label))
    return prompts


def compute(ctx: RunContext, inputs: Inputs, out: StageDir) -> FeatureCards:
    feature_sets, scores = collect(inputs, ctx.config)
    keys = sorted({f for features in feature_sets.values() for f in features})
    membership = {key: [name for name, features in feature_sets.items() if key in set(features)] for key in keys}
    prompts = discovery_prompts(inputs["prompt_sets"])
    config = ctx.config.cards
    neuronpedia = {L: ctx.saes.neuronpedia_id(L) for L in {L for L, _ in keys}}
    cards = build_cards(ctx.chat_model, ctx.saes, keys, prompts, load_vector(inputs.dir("direction")),
                        sets=membership, scores=scores, neuronpedia_ids=neuronpedia, n_prompts=config.top_prompts,
                        n_tokens=config.top_tokens, batch_size=ctx.config.batch_size)
    return FeatureCards(sets=feature_sets, n_harmful=sum(p.label == "harmful" for p in prompts),
                        n_harmless=sum(p.label == "harmless" for p in prompts), cards=cards)


def summary(result: FeatureCards) -> list[str]:
    sizes = ", ".join(f"{name} {len(features)}" for name, features in result.sets.items())
    return [f"Feature cards: {len(result.cards)} features ({sizes}); see one with "
            "`refusal-lens features show RUN_DIR LAYER:FEATURE`"]


# --- the report ---------------------------------------------------------------------------
def card_id(card: FeatureCard) -> str:
    return f"card-{card.layer}-{card.feature}"


def _tokens(effects, n: int = 3) -> str:
    return " ".join(f'<code class="tok data">{html.escape(visible(e.token))}</code>' for e in effects[:n])


def _number(value: float | None, spec: str) -> Cell:
    return Cell("–" if value is None else format(value, spec), "" if value is None else value)


def feature_table(result: FeatureCards) -> str:
    score_names = sorted({name for card in result.cards for name in card.scores})
    header = ["feature", "sets", "cosine", "fires on harmful", "fires on harmless", "mean act. harmful",
              "mean act. harmless", *(n.replace("_", " ") for n in score_names), "promotes", "Neuronpedia"]
    rows = []
    for card in result.cards:
        link = (f'<a href="{html.escape(card.neuronpedia)}">open</a>' if card.neuronpedia else "–")
        rows.append([Cell(f'<a href="#{card_id(card)}">{card.name}</a>', card.layer * 10**7 + card.feature),
                     ", ".join(card.sets), _number(card.cosine, "+.3f"),
                     _number(card.harmful.frequency, ".0%"), _number(card.harmless.frequency, ".0%"),
                     _number(card.harmful.mean_activation, ".3g"), _number(card.harmless.mean_activation, ".3g"),
                     *(_number(card.scores.get(n), ".3g") for n in score_names),
                     Cell(_tokens(card.promoted)), Cell(link)])
    return table(rows, header, sortable=True, id="feature-table", scroll=len(rows) > 15)


def _prompt_html(top) -> str:
    peak = top.max_activation or 1.0
    spans = []
    for t, (token, value) in enumerate(zip(top.tokens, top.activations)):
        text = data(visible(token))
        if t == top.max_index:
            spans.append(f'<mark title="{value:.3g}">{text}</mark>')
        elif value > 0:
            spans.append(f'<span style="background:rgba(255,170,0,{0.6 * value / peak:.2f})" '
                         f'title="{value:.3g}">{text}</span>')
        else:
            spans.append(text)
    cut = ("…" if top.cut_before else "", "…" if top.cut_after else "")
    return (f'<div class="prompt"><b>{top.max_activation:.3g}</b> {top.label} '
            f'<small>{html.escape(top.prompt_id)}</small>: {cut[0]}{"".join(spans)}{cut[1]}</div>')


def card_html(card: FeatureCard) -> str:
    scores = "".join(f"; {html.escape(name.replace('_', ' '))} {value:.3g}" for name, value in card.scores.items())
    stats = table([[label, s.n_prompts, f"{s.frequency:.0%}", f"{s.mean_activation:.3g}"]
                   for label, s in (("harmful", card.harmful), ("harmless", card.harmless))],
                  ["prompts", "n", "fires on", "mean activation"])
    effects = "".join(f"<p>{what}: " + " ".join(f'<code class="tok data">{html.escape(visible(e.token))}</code> '
                                                f"{e.logit:+.2f}" for e in effects) + "</p>"
                      for what, effects in (("Promotes", card.promoted), ("Suppresses", card.suppressed)))
    tops = ("".join(_prompt_html(t) for t in card.top_prompts) if card.top_prompts
            else "<p>It fires on none of the run's discovery prompts.</p>")
    link = (f'<p><a href="{html.escape(card.neuronpedia)}">Neuronpedia: {html.escape(card.neuronpedia)}</a></p>'
            if card.neuronpedia else "")
    return (f'<details class="card" id="{card_id(card)}"><summary>{card.name} — {html.escape(", ".join(card.sets))}'
            f"</summary><p>Cosine with the refusal direction {card.cosine:+.3f}{scores}.</p>{stats}{effects}"
            f"<p>Top prompts (strongest token marked):</p>{tops}{link}</details>")


def report(result: FeatureCards, inputs: Inputs, figures: Path) -> list[ReportSection]:
    if not result.cards:
        return [ReportSection("Features", "<p>The run reports no features (every feature set is empty).</p>")]
    sets = ", ".join(f"{html.escape(name)} ({len(features)})" for name, features in result.sets.items())
    intro = (f"<p>{len(result.cards)} features: {sets}. Read on the run's {result.n_harmful} harmful and "
             f"{result.n_harmless} harmless discovery prompts (the instruction and the template after it). "
             "Promoted and suppressed tokens: the decoder row through the final norm's weight and the "
             "unembedding. Click a header to sort; click a feature for its card.</p>")
    return [ReportSection("Features", intro + feature_table(result) + "".join(card_html(c) for c in result.cards))]


STAGE = Stage(
    name="cards",
    result=FeatureCards,
    compute=compute,
    reads=("prompt_sets", "direction", *(source.stage for source in SOURCES)),
    config_sections=("cards",),
    summary=summary,
    report=report,
)

