"""``refusal-lens run | demo`` and one command per stage worth running alone (``pipeline/stages.py``).

The pipeline itself (torch, transformers, sae_lens) is imported when a command runs, not
when the CLI starts: ``refusal-lens --help`` should not wait for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from refusal_lens.cli.common import (
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    SaesOpt,
    ThinkingOpt,
    check_output,
    console,
    friendly_errors,
    results_console,
)
from refusal_lens.pipeline import stages

if TYPE_CHECKING:
    from pydantic import BaseModel

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="A TOML or JSON run config (see docs/CONFIG.md).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="The run folder (artifacts are reused from it).")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Overrides seed.")]
NSearchOpt = Annotated[Optional[int], typer.Option("--n-search", help="Overrides data.n_search.")]
NEvalOpt = Annotated[Optional[int], typer.Option("--n-eval", help="Overrides data.n_eval.")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Overrides candidates.top_k.")]
TauOpt = Annotated[Optional[float], typer.Option("--tau", help="Overrides search.tau.")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge", help="Overrides evaluation.judge: substring, harmbench or llamaguard.")]


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("demo")(demo_command)
    for row in stages.TABLE:
        if row.command:
            app.command(row.command_name,
                        help=f"Run the pipeline up to the {row.name} stage (reusing earlier artifacts).")(
                _stage_command(row.name))


def _overrides(model, saes, device, dtype, device_map, seed, n_search, n_eval, top_k, tau, thinking=None) -> dict:
    return {"model": {"name": model, "device": device, "dtype": dtype, "device_map": device_map,
                      "thinking": thinking},
            "saes": {"source": saes}, "seed": seed,
            "data": {"n_search": n_search, "n_eval": n_eval}, "candidates": {"top_k": top_k},
            "search": {"tau": tau}}


def _load_config(config: Path | None, overrides: dict, base: dict | None = None):
    from refusal_lens.config import build_config, deep_update, read_config_file
    from refusal_lens.pipeline.config import RunConfig

    data = deep_update(base or {}, read_config_file(config) if config else {})
    return build_config(RunConfig, None, deep_update(data, overrides))


def _run(config, out: Path, until: str | None = None) -> dict[str, BaseModel]:
    from refusal_lens.pipeline.run import run_pipeline

    check_output(out, folder=True)
    config.saes.check_source()
    out.mkdir(parents=True, exist_ok=True)
    return run_pipeline(config, out, until=until, console=console)


@friendly_errors
def run_command(out: OutOpt = Path("runs/latest"), config: ConfigOpt = None, model: ModelOpt = None,
                saes: SaesOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
                device_map: DeviceMapOpt = None, seed: SeedOpt = None, n_search: NSearchOpt = None,
                n_eval: NEvalOpt = None, top_k: TopKOpt = None, tau: TauOpt = None, judge: JudgeOpt = None,
                thinking: ThinkingOpt = None,
                until: Annotated[Optional[str], typer.Option(
                    "--until", metavar="STAGE", help="stop after this stage (default: the last); "
                                                     f"one of {', '.join(stages.NAMES)}")] = None) -> None:
    """The whole pipeline: prompts → direction → candidates → attribution → minimal sets → verification → dormant → interactions → evaluation → feature cards → harm categories → upstream harm features → jailbreaks → probes."""
    overrides = _overrides(model, saes, device, dtype, device_map, seed, n_search, n_eval, top_k, tau, thinking)
    overrides["evaluation"] = {"judge": judge}
    run_config = _load_config(config, overrides)
    if until is not None:
        stages.names_until(until)  # an unknown stage fails before anything loads
    print_headline(_run(run_config, out, until=until), out)


@friendly_errors
def demo_command(out: OutOpt = Path("runs/demo"), device: DeviceOpt = None, seed: SeedOpt = None) -> None:
    """The refusal-feature search and its evaluation on the embedded organism with small defaults (minutes on a laptop CPU); the analyses after it: run --config configs/organism-analyses.toml."""
    from refusal_lens.pipeline.config import demo_config

    base = demo_config().model_dump(mode="json")
    run_config = _load_config(None, _overrides(None, None, device, None, None, seed, None, None, None, None), base)
    print_headline(_run(run_config, out, until=stages.DEMO_UNTIL), out)


def _stage_command(stage: str):
    @friendly_errors
    def command(out: OutOpt = Path("runs/latest"), config: ConfigOpt = None, model: ModelOpt = None,
                saes: SaesOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
                device_map: DeviceMapOpt = None, seed: SeedOpt = None, n_search: NSearchOpt = None,
                top_k: TopKOpt = None, tau: TauOpt = None, thinking: ThinkingOpt = None) -> None:
        run_config = _load_config(config, _overrides(model, saes, device, dtype, device_map, seed, n_search, None,
                                                     top_k, tau, thinking))
        results = _run(run_config, out, until=stage)
        if os.environ.get("RANK", "0") == "0":
            console.print(f"{stage}: artifacts in [bold]{out / 'stages'}[/]; summary in {out / 'results.json'}")
        print_headline(results, out)

    command.__name__ = f"{stage}_command"
    command.__doc__ = f"Run the pipeline up to the {stage} stage, reusing earlier stages' artifacts."
    return command


def print_headline(results: dict[str, BaseModel], out: Path) -> None:
    """Each stage's summary lines, in order, then where the report is (rank 0 alone, under torchrun)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for name, result in results.items():
        for line in stages.load(name).summary(result):
            results_console.print(line)
    results_console.print(f"Report: [bold]{(out / 'report.html').resolve()}[/]")
