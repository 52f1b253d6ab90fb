"""Run the pipeline: walk the stage table (``stages.py``) up to a stage, then write the run's outputs.

Each stage's folder is ``<run dir>/stages/<stage>-<key>/`` (``store.py``); a stage whose
folder has a ``done.json`` is reused, any other is computed (the search resumes from its
checkpoint). The run folder then gets ``results.json`` (every stage's typed result under
its name), the files the stages export (``direction.safetensors``, ``feature_sets/``) and
``report.html`` with ``figures/``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel
from rich.console import Console

from refusal_lens import distributed
from refusal_lens.artifacts import provenance, write_json, written_by_main_process
from refusal_lens.models import ChatModel
from refusal_lens.pipeline import stages
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.cost import measure
from refusal_lens.pipeline.stage import SCHEMA_VERSION, Inputs, RunContext, Stage, StageRun
from refusal_lens.report import write_report
from refusal_lens.saes import SAESet

RESULT_FILE = "result.json"


def run_pipeline(config: RunConfig, out_dir: str | Path, *, until: str | None = None,
                 console: Console | None = None, chat_model: ChatModel | None = None,
                 saes: SAESet | None = None) -> dict[str, BaseModel]:
    """Run (or reuse) every stage up to ``until`` (default: the last); write results, exported files and the report.

    ``chat_model`` / ``saes``: already loaded ones to use instead of loading ``config.model`` /
    ``config.saes`` (whose names then only label the run). Returns each stage's result by
    stage name, in order.
    """
    names = stages.names_until(until or stages.NAMES[-1])
    with distributed.data_parallel(), written_by_main_process(out_dir):
        check_data_parallel(config)
        if not distributed.is_main():
            console = Console(stderr=True, quiet=True)
        ctx = RunContext(config, Path(out_dir), console or Console(stderr=True))
        for name, loaded in (("chat_model", chat_model), ("saes", saes)):
            if loaded is not None:
                ctx.__dict__[name] = loaded  # RunContext's cached properties, filled in
        runs: dict[str, StageRun] = {}
        for name in names:
            runs[name] = run_stage(ctx, stages.load(name), runs)
        if distributed.is_main():
            write_outputs(ctx, runs)
        distributed.barrier("waiting for rank 0 to write the run's outputs")
    return {name: run.result for name, run in runs.items()}


def check_data_parallel(config: RunConfig) -> None:
    """Refuse what one process per GPU cannot do."""
    if distributed.world_size() == 1:
        return
    device = config.model.device
    if device is not None and device.startswith("cuda:"):
        raise ValueError(f"model.device = {device!r} puts every process on one GPU: leave it unset (or 'cuda'); "
                         "each process takes its own GPU (its share of them with --device-map auto).")


def _inputs(stage: Stage, runs: dict[str, StageRun]) -> Inputs:
    return Inputs({name: runs[name] for name in stage.reads})


def run_stage(ctx: RunContext, stage: Stage, earlier: dict[str, StageRun]) -> StageRun:
    """Compute ``stage`` unless its folder is done; its result is always read back from disk,
    so a fresh run and a resumed one hand the later stages the same values."""
    inputs = _inputs(stage, earlier)
    part = stage.key_part(ctx.config)
    stage_dir = ctx.store.stage(stage.name, part, [inputs.dir(name) for name in stage.reads])
    if distributed.broadcast_json(stage_dir.done, f"deciding whether to reuse the {stage.name} stage"):
        ctx.console.print(f"[dim]{stage.name}: reusing {stage_dir.path.name}[/]")
    else:
        ctx.console.print(f"[bold cyan]{stage.name}[/] ...")
        with measure(ctx.chat_model) as meter:
            result = stage.compute(ctx, inputs, stage_dir)
        if distributed.active():  # every process ran its share
            meter.forward_passes, meter.rows = distributed.all_reduce_sum(
                torch.tensor([meter.forward_passes, meter.rows])).tolist()
        stage_dir.save_json(RESULT_FILE, result.model_dump(mode="json"))
        stage_dir.mark_done(part, meter.as_dict())
        distributed.barrier(f"waiting for rank 0 to save the {stage.name} stage")
        ctx.console.print(f"{stage.name}: done in {meter.wall_time_s:.1f} s ({meter.forward_passes} forward passes)")
    return StageRun(stage, stage_dir, stage.result.model_validate(stage_dir.load_json(RESULT_FILE)))


def write_outputs(ctx: RunContext, runs: dict[str, StageRun]) -> None:
    """``results.json``, every stage's exported files, and ``report.html``."""
    results: dict = {"schema_version": SCHEMA_VERSION, "stages": {name: run.dir.path.name for name, run in runs.items()}}
    results.update({name: run.result.model_dump(mode="json") for name, run in runs.items()})
    results["cost"] = {name: run.dir.cost for name, run in runs.items()}
    results.update(provenance(ctx.config))
    for run in runs.values():
        run.stage.export(ctx, run.result, run.dir)
    write_json(ctx.out_dir / "results.json", results)
    figures = ctx.out_dir / "figures"
    sections = [section for run in runs.values()
                for section in run.stage.report(run.result, _inputs(run.stage, runs), figures)]
    write_report(ctx.out_dir, model=ctx.config.model.name, saes=ctx.config.saes.source, created=results["created"],
                 sections=sections, cost=results["cost"], versions=results["versions"])
