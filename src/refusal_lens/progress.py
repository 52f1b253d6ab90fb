"""Progress bars (rich) for everything long."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_enabled() -> bool:
    """Off with ``REFUSAL_LENS_PROGRESS=0``, and in every process of a torchrun launch but rank 0."""
    return os.environ.get("REFUSAL_LENS_PROGRESS", "1") != "0" and os.environ.get("RANK", "0") == "0"


def make_progress() -> Progress:
    # on stderr, like tqdm: results printed or piped from stdout stay clean
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
                    console=Console(stderr=True), disable=not progress_enabled())


def batches(items: Sequence[T], size: int, description: str | None = None) -> Iterator[list[T]]:
    """Consecutive chunks of ``items`` of a fixed ``size``; with a description, a progress bar over
    items. (Batches of a model's forward passes, sized to its device, go through
    ``refusal_lens.models.batches.run_batched``.)"""
    if size is None:
        raise TypeError("batches() takes a fixed size; for batches sized to the device (batch size None) "
                        "use refusal_lens.models.batches.run_batched")
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    items = list(items)
    if description is None:
        for start in range(0, len(items), size):
            yield items[start:start + size]
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=len(items))
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            yield chunk
            progress.advance(task, len(chunk))
