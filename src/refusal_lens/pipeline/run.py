"""The refusal-feature search, stage by stage (METHOD.md §2, §4), each stage cached by config hash.

    prompts → direction → candidates → search → dormant → interactions → evaluation → report

Each ``stage_*`` function reads its inputs (earlier stages' artifact folders), computes
only when its folder has no ``done.json``, and returns its folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from rich.console import Console

from refusal_lens.activations import read_features
from refusal_lens.interventions import DirectionalAblation, FeatureIntervention, FeatureOp
from refusal_lens.interventions.files import save_direction
from refusal_lens.pipeline import candidates as candidates_mod
from refusal_lens.pipeline.config import RunConfig
from refusal_lens.pipeline.cost import measure
from refusal_lens.pipeline.store import ArtifactStore, StageDir

STAGES = ("prompts", "direction", "candidates", "search", "dormant", "interactions", "evaluation")


@dataclass
class RunContext:
    config: RunConfig
    out_dir: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))

    @cached_property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.out_dir)

    @cached_property
    def chat_model(self):
        self.console.print(f"Loading model [bold]{self.config.model.name}[/] ...")
        return self.config.model.load()

    @cached_property
    def saes(self):
        self.console.print(f"Loading SAEs [bold]{self.config.saes.source}[/] ...")
        return self.config.saes.load(self.chat_model)

    def model_part(self) -> dict:
        return {"model": self.config.model.model_dump(mode="json"), "seed": self.config.seed}

    def cached(self, name: str, config_part: dict, upstream: list[StageDir],
               compute: Callable[[StageDir], None]) -> StageDir:
        stage_dir = self.store.stage(name, config_part, upstream)
        if stage_dir.done:
            self.console.print(f"[dim]{name}: reusing {stage_dir.path.name}[/]")
            return stage_dir
        self.console.print(f"[bold cyan]{name}[/] ...")
        with measure(self.chat_model) as meter:
            compute(stage_dir)
        stage_dir.mark_done(config_part, meter.as_dict())
        self.console.print(f"{name}: done in {meter.wall_time_s:.1f} s ({meter.forward_passes} forward passes)")
        return stage_dir


def _texts(items: list[dict]) -> list[str]:
    return [p["text"] for p in items]


# --- stages -----------------------------------------------------------------------------
def stage_prompts(ctx: RunContext) -> StageDir:
    from refusal_lens.pipeline.prompts import assemble
    from refusal_lens.scoring import refusal_scores

    config = ctx.config

    def compute(out: StageDir) -> None:
        runs = assemble(config.data, config.seed)
        chat = ctx.chat_model
        sets = {}
        for name, prompts in runs.__dict__.items():
            scores = refusal_scores(chat, [p.text for p in prompts], batch_size=config.batch_size,
                                    progress=f"scoring {name}")
            sets[name] = [{"id": p.id, "text": p.text, "category": p.category, "split": p.split, "score": s}
                          for p, s in zip(prompts, scores.tolist())]
        if config.data.filter_by_score:
            for name in ("harmful_train", "harmful_val", "harmful_fm"):
                sets[name] = [p for p in sets[name] if p["score"] > 0] or sets[name]
            for name in ("harmless_train", "harmless_val", "harmless_fm"):
                sets[name] = [p for p in sets[name] if p["score"] < 0] or sets[name]
        sets["harmful_search"] = [p for p in sets["harmful_train"] if p["score"] > 0][:config.data.n_search]
        if not sets["harmful_search"]:
            raise ValueError("The model refuses none of the harmful training prompts: nothing to search.")
        out.save_json("prompts.json", sets)

    return ctx.cached("prompts", {**ctx.model_part(), "data": config.data.model_dump(mode="json"),
                                  "batch_size": config.batch_size}, [], compute)


def stage_direction(ctx: RunContext, prompts: StageDir) -> StageDir:
    from refusal_lens.pipeline.direction import find_direction

    def compute(out: StageDir) -> None:
        sets = prompts.load_json("prompts.json")
        result = find_direction(ctx.chat_model, _texts(sets["harmful_train"]), _texts(sets["harmless_train"]),
                                _texts(sets["harmful_val"]), _texts(sets["harmless_val"]),
                                ctx.config.direction, ctx.config.batch_size)
        save_direction(out.path / "direction.safetensors", result.direction, result.layer,
                       {"position": str(result.position), "variant": result.variant})
        out.save_json("direction.json", {**result.summary(), "table": result.table})

    return ctx.cached("direction", {"direction": ctx.config.direction.model_dump(mode="json")}, [prompts], compute)


def load_direction_result(direction: StageDir) -> tuple[torch.Tensor, dict]:
    from refusal_lens.interventions.files import load_direction

    return load_direction(direction.path / "direction.safetensors").direction, direction.load_json("direction.json")


def stage_candidates(ctx: RunContext, direction: StageDir) -> StageDir:
    def compute(out: StageDir) -> None:
        vector, _ = load_direction_result(direction)
        out.save_json("candidates.json", candidates_mod.rank_by_cosine(ctx.saes, vector, ctx.config.candidates.top_k,
                                                                          ctx.config.candidates.layers))

    part = {"candidates": ctx.config.candidates.model_dump(mode="json"), "saes": ctx.config.saes.model_dump(mode="json")}
    return ctx.cached("candidates", part, [direction], compute)


def stage_search(ctx: RunContext, prompts: StageDir, candidates: StageDir) -> StageDir:
    from refusal_lens.generation import generate
    from refusal_lens.judges import get_judge
    from refusal_lens.pipeline.search import combine_seeds, greedy_minimal_sets, track_from_json

    config = ctx.config.search

    def compute(out: StageDir) -> None:
        search_prompts = prompts.load_json("prompts.json")["harmful_search"]
        keys = candidates_mod.as_keys(candidates.load_json("candidates.json"))
        checkpoint = out.path / "checkpoint.json"
        tracks = [track_from_json(t) for t in out.load_json("checkpoint.json")] if checkpoint.exists() else None
        if tracks:
            ctx.console.print(f"[dim]search: resuming from a checkpoint ({sum(t.status != 'running' for t in tracks)}"
                              f"/{len(tracks)} tracks finished)[/]")
        outcome = greedy_minimal_sets(
            ctx.chat_model, ctx.saes, _texts(search_prompts), keys, seeds=config.seeds, block_size=config.block_size,
            tau=config.tau, per_prompt=config.per_prompt, shared=config.shared,
            shared_flip_fraction=config.shared_flip_fraction, per_prompt_limit=config.per_prompt_limit,
            rows_per_forward=config.rows_per_forward,
            tracks=tracks, on_step=lambda ts: out.save_json("checkpoint.json", [t.to_json() for t in ts]))
        tracks = outcome.tracks
        judge = get_judge("substring")
        per_prompt = {}
        for index, prompt in enumerate(search_prompts):
            own = [t for t in tracks if t.prompts == [index] and t.name.startswith("prompt")]
            if not own:
                continue
            flippable = [t for t in own if t.status == "done"]
            inter, union = combine_seeds([t.current for t in flippable])
            per_prompt[prompt["id"]] = {"intersection": inter, "union": union,
                                        "by_seed": {t.seed: sorted(t.current) for t in flippable},
                                        "flippable": bool(flippable)}
        shared_tracks = [t for t in tracks if t.name.startswith("shared") and t.status == "done"]
        shared_inter, shared_union = combine_seeds([t.current for t in shared_tracks])
        # verification: greedy generation + substring judge under the final sets
        texts = _texts(search_prompts)
        verify = {}
        for name, features in (("shared_intersection", shared_inter), ("shared_union", shared_union)):
            if features:
                answers = generate(ctx.chat_model, texts, max_new_tokens=ctx.config.evaluation.max_new_tokens,
                                   batch_size=ctx.config.evaluation.batch_size,
                                   interventions=[FeatureIntervention(ctx.saes, features)],
                                   progress=f"verifying {name}")
                verdicts = judge.judge(texts, answers)
                verify[f"{name}_jailbreak_rate"] = sum(not v.refused for v in verdicts) / len(verdicts)
        own_sets = [(p, per_prompt[p["id"]]["intersection"]) for p in search_prompts
                    if per_prompt.get(p["id"], {}).get("intersection")]
        answers = generate_with_own_sets(ctx, [p["text"] for p, _ in own_sets], [f for _, f in own_sets])
        verdicts = judge.judge([p["text"] for p, _ in own_sets], answers) if own_sets else []
        for (prompt, _), answer, verdict in zip(own_sets, answers, verdicts):
            per_prompt[prompt["id"]].update(verified_jailbreak=not verdict.refused, response=answer)
        verify["per_prompt_jailbreak_rate"] = (sum(not v.refused for v in verdicts) / len(verdicts)) if verdicts else None
        out.save_json("search.json", {
            "shared": {"intersection": shared_inter, "union": shared_union,
                       "by_seed": {t.seed: sorted(t.current) for t in shared_tracks}},
            "per_prompt": per_prompt, "verification": verify,
            "tracks": [t.to_json() for t in tracks],
            "search_cost": {"forward_passes": outcome.forward_passes, "rows": outcome.rows,
                            "wall_time_s": outcome.wall_time_s},
        })

    return ctx.cached("search", {"search": config.model_dump(mode="json")}, [prompts, candidates], compute)


def generate_with_own_sets(ctx: RunContext, texts: list[str], feature_sets: list) -> list[str]:
    """Greedy answers, each prompt with its own ablation set (one feature set per batch row)."""
    from refusal_lens.generation import generate_batch

    answers, size = [], ctx.config.evaluation.batch_size
    for start in range(0, len(texts), size):
        sets = [[tuple(f) for f in s] for s in feature_sets[start:start + size]]
        answers += generate_batch(ctx.chat_model, texts[start:start + size],
                                  max_new_tokens=ctx.config.evaluation.max_new_tokens,
                                  interventions=[FeatureIntervention.for_rows(ctx.saes, sets)])
    return answers


def minimal_shared(search: StageDir) -> list[tuple[int, int]]:
    shared = search.load_json("search.json")["shared"]
    return [tuple(f) for f in (shared["intersection"] or shared["union"])]


def stage_dormant(ctx: RunContext, prompts: StageDir, search: StageDir) -> StageDir:
    from refusal_lens.pipeline.dormant import analyse_dormant

    def compute(out: StageDir) -> None:
        search_prompts = prompts.load_json("prompts.json")["harmful_search"]
        result = search.load_json("search.json")
        shared = analyse_dormant(ctx.chat_model, ctx.saes, minimal_shared(search), _texts(search_prompts),
                                 [p["id"] for p in search_prompts])
        per_prompt = {}
        for prompt in search_prompts:
            own = [tuple(f) for f in result["per_prompt"].get(prompt["id"], {}).get("intersection", [])]
            if own:
                per_prompt[prompt["id"]] = analyse_dormant(ctx.chat_model, ctx.saes, own, [prompt["text"]],
                                                           [prompt["id"]])["per_prompt"][prompt["id"]]
        out.save_json("dormant.json", {"shared": shared, "per_prompt_sets": per_prompt})

    return ctx.cached("dormant", {}, [prompts, search], compute)


def stage_interactions(ctx: RunContext, prompts: StageDir, search: StageDir) -> StageDir:
    from refusal_lens.pipeline.interactions import design_matrix, interaction_ranking, probe_ranking, train_fm
    from refusal_lens.pipeline.search import SetEvaluator
    from refusal_lens.prefix_cache import build_prefix_cache

    config = ctx.config.interactions

    def compute(out: StageDir) -> None:
        sets = prompts.load_json("prompts.json")
        minimal = minimal_shared(search)
        harmful, harmless = _texts(sets["harmful_fm"]), _texts(sets["harmless_fm"])
        acts = read_features(ctx.chat_model, ctx.saes, harmful + harmless, all_active=ctx.saes.layers,
                             positions=[-1], batch_size=ctx.config.batch_size)
        x, keys = design_matrix(acts, minimal, config.max_features)
        y = torch.tensor([1.0] * len(harmful) + [0.0] * len(harmless))
        fm = train_fm(x, y, keys, config, ctx.config.seed)
        ranking, pairs = interaction_ranking(fm, minimal)
        probe, probe_accuracy = probe_ranking(x, y, keys, minimal, ctx.config.seed)
        search_texts = _texts(sets["harmful_search"])
        start = min([L for L, _ in keys] + [L for L, _ in minimal])
        evaluate = SetEvaluator(ctx.chat_model, ctx.saes, build_prefix_cache(ctx.chat_model, search_texts, start),
                                FeatureOp("zero"), ctx.config.search.rows_per_forward)
        sweep = []
        for k in config.top_k:
            fm_top = [(r["layer"], r["feature"]) for r in ranking[:k]]
            probe_top = [(r["layer"], r["feature"]) for r in probe[:k]]
            variants = {"fm_with_minimal": fm_top + minimal, "fm_only": fm_top,
                        "probe_with_minimal": probe_top + minimal, "probe_only": probe_top}
            pairs_to_score = [(p, features) for features in variants.values() for p in range(len(search_texts))]
            scores, _ = evaluate(pairs_to_score)
            n = len(search_texts)
            row = {"k": k}
            for j, name in enumerate(variants):
                row[name] = (scores[j * n:(j + 1) * n] < 0).float().mean().item()
            sweep.append(row)
        out.save_json("interactions.json", {
            "fm": {"n_features": len(keys), "n_prompts": len(y), "train_accuracy": fm.train_accuracy,
                   "test_accuracy": fm.test_accuracy, "embedding_dim": config.embedding_dim},
            "probe_train_accuracy": probe_accuracy,
            "ranking": ranking[:max(config.top_k) * 2], "probe_ranking": probe[:max(config.top_k) * 2],
            "top_pairs": pairs, "sweep": sweep, "minimal_set": [list(f) for f in minimal],
            "gram": _gram_for_report(fm, ranking[:20], minimal)})

    return ctx.cached("interactions", {"interactions": config.model_dump(mode="json")}, [prompts, search], compute)


def _gram_for_report(fm, top: list[dict], minimal) -> dict:
    index = {k: j for j, k in enumerate(fm.keys)}
    rows = [(r["layer"], r["feature"]) for r in top]
    cols = [tuple(f) for f in minimal if tuple(f) in index][:30]
    with torch.no_grad():
        v = fm.model.embeddings
        gram = (v[[index[r] for r in rows]] @ v[[index[c] for c in cols]].T).tolist() if rows and cols else []
    return {"rows": [list(r) for r in rows], "cols": [list(c) for c in cols], "values": gram}


def evaluation_methods(ctx: RunContext, direction: StageDir, search: StageDir, interactions: StageDir) -> dict:
    from refusal_lens.pipeline.controls import matched_random_sets

    vector, _ = load_direction_result(direction)
    shared = search.load_json("search.json")["shared"]
    minimal = minimal_shared(search)
    ranking = interactions.load_json("interactions.json")["ranking"]
    k = max(ctx.config.interactions.top_k)
    fm_top = [(r["layer"], r["feature"]) for r in ranking[:k]]
    methods = {"none": [], "directional_ablation": [DirectionalAblation(vector)]}
    feature_sets = {"minimal_shared": minimal,
                    "minimal_shared_union": [tuple(f) for f in shared["union"]],
                    "interaction": sorted(set(minimal) | set(fm_top)),
                    "interaction_only": fm_top}
    for i, random_set in enumerate(matched_random_sets(ctx.saes, minimal, ctx.config.evaluation.n_random_sets,
                                                       ctx.config.seed)):
        feature_sets[f"random_{i + 1}"] = random_set
    for name, features in feature_sets.items():
        if features:
            methods[name] = [FeatureIntervention(ctx.saes, features)]
    return methods, {name: [list(f) for f in features] for name, features in feature_sets.items()}


def capability_cost(ctx: RunContext, harmless: list[dict], methods: dict) -> dict:
    """METHOD §1: cross-entropy of the unmodified model's own greedy answers to held-out harmless
    prompts, under each method; ``{}`` without such prompts."""
    from refusal_lens.capability import capability_report

    if not harmless:
        return {}
    config = ctx.config.evaluation
    ctx.console.print(f"  capability cost on {len(harmless)} held-out harmless prompts")
    report = capability_report(ctx.chat_model, _texts(harmless),
                               {name: ivs for name, ivs in methods.items() if ivs},
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    baseline = report["baseline"]["cross_entropy"]
    summary = {"none": {"cross_entropy": baseline["mean"], "delta_cross_entropy": 0.0}}
    for name, result in report["methods"].items():
        summary[name] = {"cross_entropy": result["cross_entropy"]["mean"],
                         "delta_cross_entropy": result["delta_cross_entropy"]}
    return {"n_prompts": len(harmless), "n_tokens": baseline["n_tokens"], "methods": summary,
            "completions": report["completions"]}


def stage_evaluation(ctx: RunContext, prompts: StageDir, direction: StageDir, search: StageDir,
                     interactions: StageDir) -> StageDir:
    from refusal_lens.evaluate import evaluate_prompts
    from refusal_lens.data.prompts import Prompt
    from refusal_lens.judges import get_judge
    from refusal_lens.stats import rate_with_interval

    config = ctx.config.evaluation

    def compute(out: StageDir) -> None:
        prompt_sets = prompts.load_json("prompts.json")
        eval_prompts = [Prompt(p["id"], p["text"], "eval", p.get("category"), p.get("split"))
                        for p in prompt_sets["harmful_eval"]]
        judge = get_judge(config.judge)
        methods, feature_sets = evaluation_methods(ctx, direction, search, interactions)
        results, per_prompt = {}, {}
        for name, interventions in methods.items():
            ctx.console.print(f"  evaluating [bold]{name}[/] on {len(eval_prompts)} held-out prompts")
            rows = evaluate_prompts(ctx.chat_model, eval_prompts, judge, interventions=interventions,
                                    max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
            asr = rate_with_interval([not r.refused for r in rows])
            flips = rate_with_interval([r.refusal_score < 0 for r in rows])
            results[name] = {"asr": asr["rate"], "ci_low": asr["ci_low"], "ci_high": asr["ci_high"], "n": asr["n"],
                             "score_flip_rate": flips["rate"], "score_flip_ci": [flips["ci_low"], flips["ci_high"]],
                             "mean_refusal_score": sum(r.refusal_score for r in rows) / len(rows),
                             "n_features": len(feature_sets.get(name, [])), "judge": config.judge}
            per_prompt[name] = [r.to_json() for r in rows]
        capability = capability_cost(ctx, prompt_sets.get("harmless_eval", []), methods)
        for name, cost in capability.get("methods", {}).items():
            results[name]["capability"] = cost
        out.save_json("evaluation.json", {"methods": results, "feature_sets": feature_sets,
                                          "per_prompt": per_prompt, "capability": capability})

    return ctx.cached("evaluation", {"evaluation": config.model_dump(mode="json"),
                                     "k": max(ctx.config.interactions.top_k)},
                      [prompts, direction, search, interactions], compute)


# --- the whole run ----------------------------------------------------------------------
def run_pipeline(config: RunConfig, out_dir: str | Path, *, until: str = "evaluation",
                 console: Console | None = None) -> dict:
    """Run (or reuse) every stage up to ``until``; write results, feature sets and the report."""
    if until not in STAGES:
        raise ValueError(f"Unknown stage {until!r}; stages: {', '.join(STAGES)}")
    ctx = RunContext(config, Path(out_dir), console or Console(stderr=True))
    wanted = STAGES[:STAGES.index(until) + 1]
    done: dict[str, StageDir] = {}
    done["prompts"] = stage_prompts(ctx)
    if "direction" in wanted:
        done["direction"] = stage_direction(ctx, done["prompts"])
    if "candidates" in wanted:
        done["candidates"] = stage_candidates(ctx, done["direction"])
    if "search" in wanted:
        done["search"] = stage_search(ctx, done["prompts"], done["candidates"])
    if "dormant" in wanted:
        done["dormant"] = stage_dormant(ctx, done["prompts"], done["search"])
    if "interactions" in wanted:
        done["interactions"] = stage_interactions(ctx, done["prompts"], done["search"])
    if "evaluation" in wanted:
        done["evaluation"] = stage_evaluation(ctx, done["prompts"], done["direction"], done["search"],
                                              done["interactions"])
    from refusal_lens.pipeline.results import write_outputs

    return write_outputs(ctx, done)
