"""``refusal-lens features list | show``: the feature cards of a finished run, in the terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from refusal_lens.cli.common import friendly_errors, results_console

if TYPE_CHECKING:
    from refusal_lens.pipeline.cards import FeatureCards

features_app = typer.Typer(help="The feature cards of a run: what each reported SAE feature is.", no_args_is_help=True)
RunDirArg = Annotated[Path, typer.Argument(help="A run folder (`refusal-lens run --out RUN_DIR`).", show_default=False)]
FeatureArg = Annotated[str, typer.Argument(help="LAYER:FEATURE, e.g. 14:345 (or L14:345).", show_default=False)]


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")


def parse_feature(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*[Ll]?(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"Feature {text!r}: give it as LAYER:FEATURE, e.g. 14:345.")
    return int(match[1]), int(match[2])


def load_cards(run_dir: Path) -> FeatureCards:
    """The ``cards`` stage's result from ``RUN_DIR/results.json``, with an error naming the fix."""
    from refusal_lens.pipeline.cards import FeatureCards

    run_dir = run_dir.expanduser()
    if not run_dir.is_dir():
        raise ValueError(f"Run folder {run_dir} does not exist{' (it is a file)' if run_dir.exists() else ''}.")
    results = run_dir / "results.json"
    if not results.exists():
        raise ValueError(f"{run_dir} holds no results.json: not a run folder. Make one with "
                         f"`refusal-lens run --out {run_dir}`.")
    try:
        saved = json.loads(results.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{results} is not valid JSON ({error}).") from None
    if "cards" not in saved:
        raise ValueError(f"{run_dir} has no feature cards: the run stopped before its cards stage. Finish it with "
                         f"`refusal-lens run --out {run_dir}` (with the run's own options), which reuses what is done.")
    return FeatureCards.model_validate(saved["cards"])


@features_app.command("show")
@friendly_errors
def show_command(run_dir: RunDirArg, feature: FeatureArg) -> None:
    """Print one feature's card: sets, cosine, activations on harmful vs harmless prompts, top prompts, tokens."""
    from refusal_lens.feature_cards import card_renderable

    key = parse_feature(feature)
    results_console.print(card_renderable(load_cards(run_dir).card(key)))


@features_app.command("list")
@friendly_errors
def list_command(run_dir: RunDirArg) -> None:
    """List the features a run reports, one line each."""
    from rich.table import Table

    from refusal_lens.console import add_name_column
    from refusal_lens.feature_cards import visible

    cards = load_cards(run_dir).cards
    table = Table(title=f"{len(cards)} features ({run_dir})")
    add_name_column(table, "feature", [c.name for c in cards])
    for column in ("sets", "cosine", "fires harmful", "fires harmless", "promotes"):
        table.add_column(column)
    for card in cards:
        table.add_row(card.name, ", ".join(card.sets), f"{card.cosine:+.3f}", f"{card.harmful.frequency:.0%}",
                      f"{card.harmless.frequency:.0%}", " ".join(visible(e.token) for e in card.promoted[:3]))
    results_console.print(table)
