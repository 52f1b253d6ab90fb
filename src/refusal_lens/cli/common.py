"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lens.console import unwrapped_console
from refusal_lens.data.prompts import Prompt

console = unwrapped_console(stderr=True)  # progress, status and errors
results_console = unwrapped_console()  # results, so that `refusal-lens ... > out.txt` captures them


# Every option is defined once, here. Options a run's config file also sets default to None
# ("not given"), so they override the file only when given.
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="'organism', a Hugging Face id, a model folder or a .gguf file "
                          "(default: organism, or a run config's model.name).")]
SaesOpt = Annotated[Optional[str], typer.Option(
    "--saes", help="'organism', a residual-stream sae_lens release RELEASE[:WIDTH[:L0]] or a folder of SAEs "
                   "(default: organism, or a run config's saes.source).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when present).")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16 (default: auto).")]
DeviceMapOpt = Annotated[Optional[str], typer.Option(
    "--device-map", help="e.g. 'auto' to spread the model over all visible GPUs.")]
ThinkingOpt = Annotated[Optional[bool], typer.Option(
    "--thinking/--no-thinking", help="Let a reasoning model (Qwen3, gpt-oss) think before it answers "
                                     "(default: off, or a run config's model.thinking).")]
PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts", help="A .txt/.json/.jsonl/.csv/.parquet file of prompts.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A registered data set (see `refusal-lens datasets list`).")]
ColumnOpt = Annotated[Optional[str], typer.Option("--column", help="The column holding the prompt (csv/parquet/json objects).")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="Keep only this split: train, val or test.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Keep only the first N prompts.")]


INPUT_ERRORS = (ValueError, KeyError, IndexError, OSError, NotImplementedError, RuntimeError)
_tracebacks = False


def show_tracebacks(on: bool) -> None:
    """``refusal-lens --debug ...``: let errors through with their traceback."""
    global _tracebacks
    _tracebacks = on


def friendly_errors(command):
    """Turn the project's input errors into one red line and exit code 2, not a traceback
    (``refusal-lens --debug`` shows the traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:  # a RuntimeError too: an exit code chosen on purpose
            raise
        except INPUT_ERRORS as error:
            if _tracebacks:
                raise
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            console.print(f"[bold red]Error:[/] {message}")
            raise typer.Exit(2) from None

    return wrapper


def load_prompts(prompts: Path | None, dataset: str | None, column: str | None = None,
                 split: str | None = None, limit: int | None = None) -> list[Prompt]:
    """Prompts from ``--prompts FILE`` or ``--dataset NAME`` (exactly one), filtered."""
    from refusal_lens.data import load_prompts as load_prompt_source

    if (prompts is None) == (dataset is None):
        raise ValueError("Give exactly one of --prompts FILE or --dataset NAME.")
    items = load_prompt_source(prompts if prompts is not None else dataset, column=column, split=split,
                               limit=limit)
    if not items:
        raise ValueError("No prompts left to evaluate (check --split / --limit / the file).")
    return items


def check_output(path: Path, *, folder: bool) -> Path:
    """Fail before any work starts when results could not be written to ``path`` (a results
    file, or a run folder when ``folder``), so a bad ``--out`` never costs finished work."""
    path = path.expanduser()
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"Cannot write {path}: {blocker} is a file, not a folder. Choose another --out.")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; a run needs a folder. Choose another --out.")
    if not folder and path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name, e.g. {path / 'results.json'}.")
    existing = path if path.exists() else next(p for p in path.parents if p.exists())
    if not os.access(existing, os.W_OK):
        raise ValueError(f"Cannot write {path}: {existing} is not writable. Choose another --out.")
    return path
