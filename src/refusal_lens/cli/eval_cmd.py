"""``refusal-lens eval``: refusal scores, greedy answers and judge verdicts under an intervention."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from refusal_lens.cli.common import (
    ColumnOpt,
    DatasetOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    LimitOpt,
    ModelOpt,
    PromptsOpt,
    SplitOpt,
    ThinkingOpt,
    check_output,
    console,
    friendly_errors,
    load_prompts,
    results_console,
)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


@friendly_errors
def eval_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the results JSON.")],
    model: ModelOpt = None,
    prompts: PromptsOpt = None,
    dataset: DatasetOpt = None,
    column: ColumnOpt = None,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    intervention: Annotated[str, typer.Option(
        help="none | direction:FILE (directional ablation) | addition:FILE (activation addition at "
             "the file's layer) | features:FILE (SAE feature set, see docs/FORMATS.md)")] = "none",
    positions: Annotated[str | None, typer.Option(
        help="Where a features:FILE edit acts: all | prompt | post_instruction | generated (overrides the "
             "file's 'positions'; see docs/FORMATS.md)")] = None,
    judge: Annotated[str, typer.Option(help="substring | refusal_score | harmbench | llamaguard; several, "
                                            "comma-separated, add per-judge ASRs and an agreement table (the "
                                            "first decides `refused`)")] = "substring",
    judge_device: Annotated[str | None, typer.Option(help="Device of a classifier judge.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="Prompts a batch (default: the largest that fits the GPU, 16 on the CPU).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    refusal_tokens: Annotated[str | None, typer.Option(
        help="Comma-separated tokens whose probability is P(refusal) (default: the family's, \"I\").")] = None,
    chat_template: Annotated[str | None, typer.Option(help="A Jinja chat template, or a file holding one.")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="A system turn before each prompt.")] = None,
    thinking: ThinkingOpt = None,
    family: Annotated[str | None, typer.Option(
        help="The chat family, when detection gets it wrong: gemma2, gemma3, llama3, qwen2.5, qwen3, mistral, "
             "phi3, gpt-oss, chatml, generic.")] = None,
    capability: Annotated[str | None, typer.Option(
        help="Also measure the intervention's capability cost: cross-entropy of the unmodified model's own "
             "greedy answers to these harmless prompts (a registered set or a file; its test split when it "
             "has one), with vs without the intervention.")] = None,
    capability_limit: Annotated[int, typer.Option(min=1, help="Harmless prompts for --capability.")] = 32,
    mc: Annotated[Path | None, typer.Option(
        help="Multiple-choice questions (ARC-style .jsonl/.json/.parquet, see docs/FORMATS.md): accuracy with "
             "vs without the intervention, added to the capability cost.")] = None,
) -> None:
    """Score, answer and judge every prompt; write per-prompt results and a summary with 95% intervals."""
    from refusal_lens.artifacts import provenance, write_json
    from refusal_lens.config import ModelConfig
    from refusal_lens.evaluate import evaluate_prompts, judge_tables, summarize
    from refusal_lens.interventions.parse import (
        build_interventions,
        read_intervention_spec,
    )

    check_output(out, folder=False)
    prompt_set = load_prompts(prompts, dataset, column, split, limit)
    spec = read_intervention_spec(intervention)
    if positions is not None:
        check_positions(positions, spec.kind)
    model_config = ModelConfig(name=model or "organism", dtype=dtype or "auto", device=device,
                               device_map=device_map, refusal_tokens=refusal_tokens.split(",") if refusal_tokens else None,
                               chat_template=chat_template, system_prompt=system_prompt, thinking=bool(thinking),
                               family=family)
    console.print(f"Loading [bold]{model_config.name}[/] ...")
    chat_model = model_config.load()
    interventions = build_interventions(spec, chat_model, positions=positions)
    judges = [_make_judge(name.strip(), chat_model, interventions, judge_device) for name in judge.split(",")]
    results = evaluate_prompts(chat_model, prompt_set, judges[0], interventions=interventions,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, extra_judges=judges[1:])
    summary = summarize(results)
    summary.update(judge_tables(results))
    config = {"model": model_config.model_dump(mode="json"), "prompts": str(prompts) if prompts else None,
              "dataset": dataset, "column": column, "split": split, "limit": limit,
              "intervention": intervention, "positions": positions, "intervention_details": [i.describe() for i in interventions],
              "judge": judge, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    if capability or mc:
        summary["capability"] = _capability_cost(chat_model, interventions, capability, capability_limit,
                                                 mc, max_new_tokens, batch_size)
    config.update(capability=capability, capability_limit=capability_limit, mc=str(mc) if mc else None)
    summary.update(judge=judge, intervention=intervention, **provenance(config))
    write_json(out, {"results": [r.to_json() for r in results], "summary": summary})
    _print_summary(summary, out)


def check_positions(positions: str, kind: str) -> None:
    from refusal_lens.interventions.files import InterventionFileError
    from refusal_lens.interventions.positions import POSITION_SCOPES

    if positions not in POSITION_SCOPES:
        raise InterventionFileError(f"Unknown --positions {positions!r}: use one of {', '.join(POSITION_SCOPES)}.")
    if kind != "features":
        raise InterventionFileError("--positions limits a feature edit: use it with --intervention features:FILE.")


def _capability_cost(chat_model, interventions, harmless: str | None, limit: int, mc: Path | None,
                     max_new_tokens: int, batch_size: int | None) -> dict:
    from refusal_lens.capability import capability_report, load_mc_file
    from refusal_lens.data import load_prompts as load_prompt_set

    instructions: list[str] = []
    if harmless:
        prompts = load_prompt_set(harmless)
        test = [p for p in prompts if p.split == "test"]
        instructions = [p.text for p in (test or prompts)][:limit]
    questions = load_mc_file(mc) if mc else None
    console.print(f"Capability cost on {len(instructions)} harmless prompts"
                  + (f" and {len(questions)} multiple-choice questions" if questions else "") + " ...")
    report = capability_report(chat_model, instructions, {"intervention": interventions},
                               mc_questions=questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return {"n_prompts": len(instructions), "baseline": report["baseline"],
            "intervention": report["methods"]["intervention"], "completions": report["completions"]}


def _make_judge(name: str, chat_model, interventions, device: str | None):
    from refusal_lens.judges import canonical_judge_name, get_judge

    kwargs = {}
    if canonical_judge_name(name) == "refusal_score":
        kwargs.update(chat_model=chat_model, interventions=interventions)
    elif device:
        kwargs["device"] = device
    return get_judge(name, **kwargs)


def _print_summary(summary: dict, out: Path) -> None:
    low, high = summary["refusal_rate_ci"]
    table = Table(title="refusal-lens eval")
    for column in ("n", "refusal rate (95% CI)", "attack success rate", "mean refusal score"):
        table.add_column(column)
    table.add_row(str(summary["n"]), f"{summary['refusal_rate']:.1%} [{low:.1%}, {high:.1%}]",
                  f"{summary['asr']:.1%}", f"{summary['mean_refusal_score']:+.2f}")
    results_console.print(table)
    cost = summary.get("capability", {}).get("intervention", {})
    if "delta_cross_entropy" in cost:
        results_console.print(f"capability cost: cross-entropy of own harmless answers "
                              f"{cost['cross_entropy']['mean']:.3f} "
                              f"({cost['delta_cross_entropy']:+.3f} vs no intervention)")
    if "next_token" in cost:
        shift = cost["next_token"]
        results_console.print(f"next-token KL on harmless prompts: mean {shift['kl_mean']:.3f} "
                              f"[{shift['kl_ci'][0]:.3f}, {shift['kl_ci'][1]:.3f}], median {shift['kl_median']:.3f}, "
                              f"max {shift['kl_max']:.3f}; top-1 token unchanged on {shift['top1_unchanged']:.0%}")
    if "multiple_choice" in cost:
        results_console.print(f"multiple-choice accuracy {cost['multiple_choice']['rate']:.1%} "
                              f"(p = {cost['multiple_choice_vs_baseline']['p_value']:.3f} vs no intervention, McNemar)")
    for row in summary.get("judge_agreement", []):
        results_console.print(f"judges {row['judge_a']} vs {row['judge_b']}: agreement {row['agree_rate']:.1%}, "
                              f"kappa {row['kappa']:.2f}")
    results_console.print(f"Results written to [bold]{out}[/]")
