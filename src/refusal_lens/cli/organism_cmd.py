"""``refusal-lens organism fetch|info|eval|build``: the embedded model organism.

The organism is imported inside each command, as the other command modules import the library:
importing it loads torch, transformers and sae_lens, which ``refusal-lens --help`` must not wait for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

import refusal_lens
from refusal_lens.cli.common import (
    DeviceOpt,
    LimitOpt,
    console,
    friendly_errors,
    results_console,
)

organism_app = typer.Typer(help="The embedded demo model: SmolLM2-135M-Instruct + safety LoRA + SAEs.",
                           no_args_is_help=True)


def _result(line: str) -> None:
    """One line of results on stdout, as written (no wrapping, no markup)."""
    results_console.out(line, highlight=False)


def _rate_line(label: str, r: dict, ci_low: float, ci_high: float) -> str:
    return f"{label} {r['k']:4d}/{r['n']:<4d} = {r['rate']:.3f} [{ci_low:.3f}, {ci_high:.3f}]"


@organism_app.command()
@friendly_errors
def fetch() -> None:
    """Put everything loading the organism needs into the cache (the setup step; needs PyPI once)."""
    from refusal_lens import organism

    start = time.time()
    where = organism.fetch(progress=console.print)
    for key, value in where.items():
        _result(f"{key:7s} {value}")
    console.print(f"organism ready ({time.time() - start:.0f} s)")


@organism_app.command()
@friendly_errors
def info(as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False) -> None:
    """What is shipped: files, sizes, SAE layers, build configuration and measured metrics."""
    from refusal_lens import organism

    m = organism.manifest()
    if as_json:
        _result(json.dumps(m, indent=1))
        return
    _result(f"{m['name']}, built {m['built']}")
    _result(f"base model: {m['base_model']['name']} ({m['base_model']['wheel']}, {m['base_model']['member']})")
    _result(f"SAE layers: {m['sae_layers']}")
    _result(f"assets: {len(m['files'])} files, {m['total_bytes'] / 1e6:.1f} MB")
    cached = organism.merged_dir()
    state = "present" if (cached / "config.json").exists() else "absent: run `refusal-lens organism fetch`"
    _result(f"merged model cache: {cached} ({state})")
    metrics = m["metrics"]
    for group, r in metrics["refusal_test"].items():
        _result(_rate_line(f"refusal, test, {group:22s}", r, *r["ci95"]))
    j = metrics["jailbreaks_test"]["answered"]
    _result(f"jailbreaks answered (test)             {j['k']:4d}/{j['n']:<4d} = {j['rate']:.3f}")
    for name, r in metrics.get("attacks", {}).items():
        a = r["answered"]
        _result(f"attack {name:31s} {a['k']:4d}/{a['n']:<4d} = {a['rate']:.3f} answered")
    if metrics.get("load_seconds") is not None:
        _result(f"load (fresh process, organism + SAEs): {metrics['load_seconds']:.1f} s")
    for layer, s in metrics["saes_test"].items():
        _result(f"SAE layer {int(layer):2d}: FVE {s['fve']:.3f}  CE recovered {s['ce_loss_recovered']:.3f}  "
                f"L0 {s['l0']:.1f}  dead {s['dead_fraction']:.3f}")


@organism_app.command("eval")
@friendly_errors
def eval_(
    limit: LimitOpt = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    device: DeviceOpt = None,
) -> None:
    """Measure the installed organism again: refusal on held-out test prompts (--limit: the first N
    of each group), SAE FVE and CE recovered on the same prompts with the organism's answers."""
    from refusal_lens import organism
    from refusal_lens.organism.heldout import heldout_groups
    from refusal_lens.organism.measure import (
        chat_sequences,
        prefix_length,
        refusal_rates,
        sae_metrics,
    )

    start = time.time()
    chat = organism.load_organism(device=device)
    saes = organism.organism_saes(device=str(chat.device))
    console.print(f"loaded organism + {len(saes)} SAEs in {time.time() - start:.1f} s")
    rates, texts, answers = refusal_rates(chat, heldout_groups(limit or 0), max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)
    for name, r in rates.items():
        _result(_rate_line(f"refused, {name:9s}", r, r["ci_low"], r["ci_high"]))
    seqs = chat_sequences(chat, texts, answers, max_new_tokens)
    for layer, s in sae_metrics(chat, {L: saes[L] for L in saes}, seqs, prefix_length(chat)).items():
        _result(f"SAE layer {layer:2d}: FVE {s['fve']:.3f}  CE recovered {s['ce_loss_recovered']:.3f}  "
                f"L0 {s['l0']:.1f}  dead {s['dead_fraction']:.3f}")


def find_checkout() -> Path:
    """The source checkout this refusal-lens runs from (``organism_build/`` next to ``src/``)."""
    root = Path(refusal_lens.__file__).resolve().parents[2]
    if not (root / "organism_build" / "__main__.py").is_file():
        raise RuntimeError(
            f"`refusal-lens organism build` runs the build recipe in a source checkout, and this refusal-lens "
            f"({Path(refusal_lens.__file__).parent}) is not in one (no organism_build/ next to its src/). Clone "
            "the repository, install it with `pip install -e .` and run the command there, or run "
            "`python -m organism_build build --out DIR` from the checkout's root.")
    return root


BUILD_HELP = ("Rebuild the adapter and the SAEs from scratch (≤ 90 min on 2 CPU cores; resumable by stage) with "
              "`python -m organism_build build` of this source checkout, which writes only into its build folder. "
              "`python -m organism_build install DIR` then copies a finished build into the package and "
              "re-renders docs/ORGANISM.md.")


@organism_app.command(help=BUILD_HELP)
@friendly_errors
def build(
    out: Annotated[Optional[Path], typer.Option(
        "--out", "--build-dir", help="Build folder (default: <cache>/organism/build-<recipe key>: a changed "
                                     "recipe starts afresh).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Last stage to run (default: every stage).")] = None,
    force: Annotated[Optional[list[str]], typer.Option(
        help="Redo this stage even if its output exists (repeatable).")] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default; 1 is faster when other "
                                              "jobs share the cores).")] = 0,
) -> None:
    """Run the checkout's build recipe in a subprocess (see ``BUILD_HELP``)."""
    root = find_checkout()
    command = [sys.executable, "-m", "organism_build", "build", "--threads", str(threads)]
    command += ["--out", str(out.resolve())] if out is not None else []
    command += ["--until", until] if until is not None else []
    for stage in force or ():
        command += ["--force", stage]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "src"), str(root),
                                                                     os.environ.get("PYTHONPATH")]))}
    returncode = subprocess.run(command, cwd=root, env=env).returncode
    if returncode:
        raise typer.Exit(returncode)


def register(app: typer.Typer) -> None:
    """Add the ``organism`` sub-app."""
    app.add_typer(organism_app, name="organism")
