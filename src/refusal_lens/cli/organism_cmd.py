"""``refusal-lens organism build|fetch|info|eval``: the embedded model organism."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

organism_app = typer.Typer(help="The embedded demo model: SmolLM2-135M-Instruct + safety LoRA + SAEs.",
                           no_args_is_help=True)


def _fail(error: Exception) -> None:
    typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@organism_app.command()
def fetch() -> None:
    """Put everything loading the organism needs into the cache (the setup step; needs PyPI once)."""
    from refusal_lens.organism import fetch as fetch_organism
    from refusal_lens.wheels import AssetError

    start = time.time()
    try:
        where = fetch_organism(progress=lambda m: typer.echo(m))
    except AssetError as error:
        _fail(error)
    for key, value in where.items():
        typer.echo(f"{key:7s} {value}")
    typer.echo(f"organism ready ({time.time() - start:.0f} s)")


@organism_app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON.")) -> None:
    """What is shipped: files, sizes, SAE layers, build configuration and measured metrics."""
    from refusal_lens.organism import manifest, merged_dir
    from refusal_lens.wheels import AssetError

    try:
        m = manifest()
    except AssetError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(m, indent=1))
        return
    typer.echo(f"{m['name']}, built {m['built']}")
    typer.echo(f"base model: {m['base_model']['name']} ({m['base_model']['wheel']}, {m['base_model']['member']})")
    typer.echo(f"SAE layers: {m['sae_layers']}")
    typer.echo(f"assets: {len(m['files'])} files, {m['total_bytes'] / 1e6:.1f} MB")
    cached = merged_dir()
    typer.echo(f"merged model cache: {cached} ({'present' if (cached / 'config.json').exists() else 'absent: run `refusal-lens organism fetch`'})")
    metrics = m["metrics"]
    for group, r in metrics["refusal_test"].items():
        typer.echo(f"refusal, test, {group:22s} {r['k']:4d}/{r['n']:<4d} = {r['rate']:.3f} "
                   f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    j = metrics["jailbreaks_test"]["answered"]
    typer.echo(f"jailbreaks answered (test)             {j['k']:4d}/{j['n']:<4d} = {j['rate']:.3f}")
    for name, r in metrics.get("attacks", {}).items():
        a = r["answered"]
        typer.echo(f"attack {name:31s} {a['k']:4d}/{a['n']:<4d} = {a['rate']:.3f} answered")
    if metrics.get("load_seconds") is not None:
        typer.echo(f"load (fresh process, organism + SAEs): {metrics['load_seconds']:.1f} s")
    for layer, s in metrics["saes_test"].items():
        typer.echo(f"SAE layer {int(layer):2d}: FVE {s['fve']:.3f}  CE recovered {s['ce_loss_recovered']:.3f}  "
                   f"L0 {s['l0']:.1f}  dead {s['dead_fraction']:.3f}")


@organism_app.command()
def build(
    build_dir: Optional[Path] = typer.Option(None, help="Working folder (default: <cache>/organism/"
                                                        "build-<recipe key>: a changed recipe starts afresh)."),
    until: str = typer.Option("package", help="Last stage to run."),
    force: list[str] = typer.Option([], help="Redo these stages even if their output exists."),
    threads: int = typer.Option(0, help="torch threads (0: torch's default; 1 is faster when other "
                                        "jobs share the cores)."),
) -> None:
    """Rebuild the adapter and the SAEs from scratch (≤ 90 min on 2 CPU cores; resumable by stage).

    The last stage overwrites the shipped assets in the package and the model card's histogram.
    """
    from refusal_lens.organism.build import STAGES, Build

    if until not in STAGES:
        _fail(ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}"))
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        _fail(ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        build = Build(build_dir)
    except ValueError as e:
        _fail(e)
    typer.echo(f"build folder: {build.folder}")
    build.run(STAGES[:STAGES.index(until) + 1], force=tuple(force))
    typer.echo(f"build folder: {build.folder}")


@organism_app.command("eval")
def eval_(
    n: int = typer.Option(0, help="Prompts per group (0 = the whole held-out test split)."),
    max_new_tokens: int = typer.Option(64),
    batch_size: int = typer.Option(16),
) -> None:
    """Measure the installed organism again: refusal on held-out prompts, SAE FVE and CE recovered."""
    from refusal_lens.generation import generate
    from refusal_lens.judges import SubstringJudge
    from refusal_lens.organism import load_organism, organism_saes
    from refusal_lens.organism import prompts as P
    from refusal_lens.organism.build_saes import chat_sequences, prefix_length
    from refusal_lens.organism.evaluate import rate, sae_metrics
    from refusal_lens.wheels import AssetError

    start = time.time()
    try:
        chat = load_organism()
        saes = organism_saes(device="cpu")
    except AssetError as error:
        _fail(error)
    typer.echo(f"loaded organism + {len(saes)} SAEs in {time.time() - start:.1f} s")
    judge = SubstringJudge()
    harmless = P.by_split(P.harmless() + P.lookalike_extras(), "test")
    groups = {"harmful": P.by_split(P.harmful(), "test"),
              "harmless": [p for p in harmless if p.category != "lookalike"],
              "lookalike": [p for p in harmless if p.category == "lookalike"]}
    texts, answers = [], []
    for name, prompts in groups.items():
        prompts = prompts[:n] if n else prompts
        out = generate(chat, [p.text for p in prompts], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=name)
        r = rate([judge.judge_one(a).refused for a in out])
        typer.echo(f"refused, {name:9s} {r['k']:4d}/{r['n']:<4d} = {r['rate']:.3f} "
                   f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
        texts += [p.text for p in prompts]
        answers += out
    seqs = chat_sequences(chat, texts, answers, max_new_tokens)
    for layer, s in sae_metrics(chat, {L: saes[L] for L in saes}, seqs, prefix_length(chat)).items():
        typer.echo(f"SAE layer {layer:2d}: FVE {s['fve']:.3f}  CE recovered {s['ce_loss_recovered']:.3f}  "
                   f"L0 {s['l0']:.1f}  dead {s['dead_fraction']:.3f}")


def register(app: typer.Typer) -> None:
    """Add the ``organism`` sub-app."""
    app.add_typer(organism_app, name="organism")
