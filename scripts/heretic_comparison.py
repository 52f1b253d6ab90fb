"""The heretic comparison of issue 24, reproducibly (docs/HERETIC.md): heretic and refusal-lens's
methods measured the same way on a run's held-out prompts.

    python scripts/heretic_comparison.py prepare RUN_DIR HERETIC_DIR   # heretic's prompt files + config.toml
    (cd HERETIC_DIR && heretic)                                         # heretic-llm==1.4.0, its own venv
    python scripts/heretic_comparison.py measure RUN_DIR --model HERETIC_DIR/model --out heretic.json
    python scripts/heretic_comparison.py measure RUN_DIR --intervention features:RUN_DIR/feature_sets/X.json --out x.json

``prepare`` gives heretic the run's own discovery prompts: train (heretic's direction
prompts) and validation (the prompts its Optuna objective scores), never the evaluation ones;
the same system text the run's prompts carry; greedy answers of the evaluation's length.
``measure`` scores a model (heretic's export) or an intervention (any refusal-lens method) on
the run's held-out prompts: the substring judge's verdict on greedy answers to
``harmful_eval``, and the next-token KL (last prompt position, the run's model unedited vs
edited) on ``harmless_eval``. heretic is not a dependency of refusal-lens: this script only
writes its inputs and reads its output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERETIC_VERSION = "1.4.0"
N_TRIALS = 40
SEED = 0
MAX_RESPONSE_LENGTH = 48  # tokens of each greedy answer, heretic's and ours
PROMPT_FILES = {  # heretic setting → (file, the run's prompt set)
    "good_prompts": ("harmless_train.txt", "harmless_train"),
    "bad_prompts": ("harmful_train.txt", "harmful_train"),
    "good_evaluation_prompts": ("harmless_val.txt", "harmless_val"),
    "bad_evaluation_prompts": ("harmful_val.txt", "harmful_val"),
}


def read_run(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: give the folder of a finished `refusal-lens run`.")
    results = json.loads(path.read_text())
    if "prompt_sets" not in results or "config" not in results:
        raise SystemExit(f"{path} has no prompt_sets / config: rerun the pipeline with this version.")
    return results


def default_system_text(tokenizer, template_kwargs: dict | None = None) -> str | None:
    """The system text the chat template writes when the conversation has none (None if it writes none)."""
    from jinja2 import TemplateError

    kwargs = {"tokenize": False, "add_generation_prompt": True, **(template_kwargs or {})}
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "@@USER@@"}], **kwargs)
    try:
        marked = tokenizer.apply_chat_template([{"role": "system", "content": "@@SYSTEM@@"},
                                                {"role": "user", "content": "@@USER@@"}], **kwargs)
    except (TemplateError, ValueError):  # a template that rejects a system role (Gemma-2) writes none
        return None
    before, after = marked.split("@@SYSTEM@@")
    if not (plain.startswith(before) and plain.endswith(after)) or len(plain) < len(before) + len(after):
        return None
    return plain[len(before):len(plain) - len(after)]


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def heretic_config(model_path: str, system_prompt: str | None, seed: int = SEED, n_trials: int = N_TRIALS) -> str:
    lines = [f"# heretic-llm=={HERETIC_VERSION} settings for issue 24's comparison (scripts/heretic_comparison.py)",
             f"model = {toml_string(model_path)}",
             'dtypes = ["float32"]', 'device_map = "cpu"',
             f"n_trials = {n_trials}", f"seed = {seed}",
             f"max_response_length = {MAX_RESPONSE_LENGTH}",
             'export_strategy = "merge"']
    if system_prompt is not None:
        lines.append(f"system_prompt = {toml_string(system_prompt)}")
    for setting, (file, _) in PROMPT_FILES.items():
        lines += ["", f"[{setting}]", f"dataset = {toml_string(file)}"]
    return "\n".join(lines) + "\n"


def prepare(run_dir: Path, out_dir: Path, seed: int = SEED, n_trials: int = N_TRIALS) -> Path:
    """Write heretic's prompt files and ``config.toml`` (heretic reads it from its working folder)."""
    from refusal_lens.config import ModelConfig

    results = read_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, name in PROMPT_FILES.values():
        texts = [p["text"] for p in results["prompt_sets"][name]]
        if any("\n" in t for t in texts):
            raise SystemExit(f"A prompt of {name} spans lines; heretic reads one prompt a line.")
        (out_dir / file).write_text("".join(t + "\n" for t in texts))
    model_config = ModelConfig.model_validate(results["config"]["model"])
    chat = model_config.load()
    model_path = model_folder(chat)
    system = chat.system_prompt if chat.system_prompt is not None else default_system_text(
        chat.tokenizer, chat.family.template_kwargs)
    check_same_prompts(chat, system)
    config = out_dir / "config.toml"
    config.write_text(heretic_config(model_path, system, seed, n_trials))
    return config


def model_folder(chat) -> str:
    """The folder the run's model was loaded from (heretic loads it by path)."""
    path = getattr(chat.model, "name_or_path", None) or chat.model.config.name_or_path
    if not path or not os.path.isdir(path):
        raise SystemExit(f"The run's model {chat.name!r} was not loaded from a folder heretic can read ({path!r}).")
    return str(Path(path).resolve())


def check_same_prompts(chat, system: str | None) -> None:
    """heretic's prompts (an explicit system turn) must be the run's prompts, byte for byte."""
    mine = chat.format_prompts(["@@USER@@"])[0]
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": "@@USER@@"}]
    theirs = chat.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                **chat.family.template_kwargs)
    if mine != theirs:
        raise SystemExit("heretic's prompts would differ from the run's: "
                         f"{theirs!r} vs {mine!r}; set the model's system prompt explicitly.")


def measure(run_dir: Path, model: str | None = None, intervention: str = "none", batch_size: int = 16) -> dict:
    """ASR on ``harmful_eval`` and next-token KL on ``harmless_eval``, against the run's model unedited."""
    from refusal_lens.config import ModelConfig
    from refusal_lens.interventions.parse import parse_intervention

    results = read_run(run_dir)
    base_config = ModelConfig.model_validate(results["config"]["model"])
    base = base_config.load()
    edited = base if model is None else ModelConfig.model_validate(
        {**base_config.model_dump(), "name": model}).load()
    interventions = parse_intervention(intervention, edited)
    return {"model": model or base_config.name, "intervention": intervention,
            **measure_loaded(base, edited, interventions, results["prompt_sets"], batch_size)}


def measure_loaded(base, edited, interventions, prompt_sets: dict, batch_size: int = 16,
                   base_logits=None) -> dict:
    """``measure`` for models already loaded (``base_logits``: the base's harmless_eval logits, if known)."""
    from refusal_lens.data.prompts import Prompt
    from refusal_lens.evaluate import evaluate_prompts
    from refusal_lens.judges import get_judge
    from refusal_lens.stats import rate_with_interval
    from refusal_lens.targeting import kl_summary

    harmless = [p["text"] for p in prompt_sets["harmless_eval"]]
    if base_logits is None:
        base_logits = _batched_logits(base, harmless, [], batch_size)
    edited_logits = _batched_logits(edited, harmless, interventions, batch_size)
    harmful = [Prompt(p["id"], p["text"], "eval", p.get("category"), p.get("split"))
               for p in prompt_sets["harmful_eval"]]
    rows = evaluate_prompts(edited, harmful, get_judge("substring"), interventions=interventions,
                            max_new_tokens=MAX_RESPONSE_LENGTH, batch_size=batch_size)
    asr = rate_with_interval([not r.refused for r in rows])
    return {"harmful_refused": sum(r.refused for r in rows), "n_harmful": len(rows),
            "asr": asr["rate"], "asr_ci": [asr["ci_low"], asr["ci_high"]],
            "kl": kl_summary(base_logits, edited_logits), "max_new_tokens": MAX_RESPONSE_LENGTH,
            "answers": [r.to_json() for r in rows]}


def _batched_logits(chat, texts, interventions, batch_size):
    import torch

    from refusal_lens.scoring import last_position_logits

    return torch.cat([last_position_logits(chat, texts[i:i + batch_size], interventions).float().cpu()
                      for i in range(0, len(texts), batch_size)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="heretic's prompt files and config.toml from a run folder")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--n-trials", type=int, default=N_TRIALS)
    m = commands.add_parser("measure", help="ASR and next-token KL on the run's held-out prompts")
    m.add_argument("run_dir", type=Path)
    m.add_argument("--model", help="a model folder (e.g. heretic's export); default: the run's model")
    m.add_argument("--intervention", default="none", help="as `refusal-lens eval --intervention`")
    m.add_argument("--batch-size", type=int, default=16)
    m.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        print(f"wrote {prepare(args.run_dir, args.out_dir, args.seed, args.n_trials)}")
        return 0
    result = measure(args.run_dir, args.model, args.intervention, args.batch_size)
    args.out.write_text(json.dumps(result, indent=2))
    kl = result["kl"]
    print(f"harmful refused {result['harmful_refused']}/{result['n_harmful']} (ASR {result['asr']:.1%}); "
          f"harmless next-token KL mean {kl['mean']:.3f} (median {kl['median']:.3f}, max {kl['max']:.3f}), "
          f"top-1 unchanged {kl['top1_unchanged']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
