"""Taking a finished stage's work from an older build folder, when it can be checked to be this
build's: ``build --reuse-base-from OLD`` (the ``base`` answers, below) and ``build
--reuse-lora-passes-from OLD`` (the ``base`` answers and the LoRA passes the two recipes share,
:func:`reuse_lora_passes`).

``--reuse-base-from``: take the ``base`` stage's answers from an older build folder.

``base`` (the untuned model's greedy answers, about an hour on two CPU threads) depends only on
the prompts it answers, how it batches them and four settings (:data:`BASE_SETTINGS`); a batch's
answers depend on which prompts share it (padding). The prompts added since recipe r12
(``build.ANSWERED_APART``) are answered in batches of their own, so every other group of
:func:`answers.base_groups` is batched exactly as r12 batched it, and r12's answers to them are
the answers this build would write. They are taken only when that can be checked:

- the old folder's recipe key is the key of this build's prompts less the ones answered apart,
  with the old folder's own configuration: it read exactly the other prompts, in the same order;
- the settings ``base`` reads are equal, and the old answers cover exactly those groups;
- the untuned model, run now, answers some batches of each group (:data:`CHECKED_BATCHES`: the
  shortest prompts and the longest) exactly as the old folder says, scores within
  :data:`SCORE_TOLERANCE` (the library's generation code may have changed since r12).

Then the answers are written as the ``base`` stage's saved progress (its ``*.partial.json``
files), and ``base`` generates only the prompts answered apart. ``base_reused.json`` records
where the answers came from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from organism_build.answers import BASE, answer_batch, answer_batches, base_groups
from organism_build.build import ANSWERED_APART, Build, load_base_chat, log, recipe_key
from refusal_lens.artifacts import atomic_dir, read_json, write_atomic, write_json
from refusal_lens.models import ChatModel

BASE_SETTINGS = ("seed", "max_new_tokens", "generation_batch_size", "base_harmful_sample")
CHECKED_BATCHES = (0, -1)
SCORE_TOLERANCE = 1e-4
RECORD = "base_reused.json"


def _refuse(old: Path, why: str) -> ValueError:
    return ValueError(f"cannot reuse the base answers of {old}: {why}. Run `base` in full (drop --reuse-base-from).")


def _finished_base_recipe(old: Path, flag: str) -> dict:
    """The old folder's ``recipe.json``, once its ``base`` stage is known to have finished."""
    for name in ("recipe.json", f"{BASE}.json"):
        if not (old / name).is_file():
            raise FileNotFoundError(f"{old / name} does not exist: {old} is not a build folder whose `base` "
                                    f"stage finished. Pass the folder of a finished `base`, or drop {flag}.")
    return read_json(old / "recipe.json")


def reusable_answers(build: Build, old: Path) -> dict[str, dict[str, dict]]:
    """The old folder's ``base`` answers, by group (every group of ``base_groups`` but the one
    answered apart), after the checks of the recipe key, the settings and the ids."""
    recipe = _finished_base_recipe(old, "--reuse-base-from")
    differ = [k for k in BASE_SETTINGS if recipe["config"].get(k) != getattr(build.config, k)]
    if differ:
        raise _refuse(old, f"its settings {', '.join(differ)} differ from this build's")
    if recipe["key"] != recipe_key(recipe["config"], build.prompts_read(leave_out=ANSWERED_APART)):
        raise _refuse(old, "it read other prompts than this build does, less the ones answered apart "
                           f"({', '.join(ANSWERED_APART)})")
    answers = read_json(old / f"{BASE}.json")
    groups = {name: items for name, items in base_groups(build).items() if name != f"{BASE}_apart"}
    wanted = {pid for items in groups.values() for pid, _ in items}
    if set(answers) != wanted:
        raise _refuse(old, f"its answers are not those of this build's groups ({len(set(answers) - wanted)} "
                           f"extra, {len(wanted - set(answers))} missing)")
    # in the order ``base`` generates them, so that its output is the same file as a fresh run's
    size = build.config.generation_batch_size
    return {name: {pid: answers[pid] for batch in answer_batches(items, size) for pid, _ in batch}
            for name, items in groups.items()}


def check_answers_now(build: Build, chat: ChatModel, old: Path, reused: dict[str, dict[str, dict]]) -> dict:
    """Answer :data:`CHECKED_BATCHES` of every reused group again, as ``base`` batches them;
    ``{group: batch indices checked}``."""
    groups = base_groups(build)
    checked = {}
    for name, answers in reused.items():
        batches = answer_batches(groups[name], build.config.generation_batch_size)
        checked[name] = sorted({range(len(batches))[i] for i in CHECKED_BATCHES}) if batches else []
        for index in checked[name]:
            for pid, fresh in answer_batch(build, chat, batches[index]).items():
                saved = answers[pid]
                if fresh["answer"] != saved["answer"] or abs(fresh["score"] - saved["score"]) > SCORE_TOLERANCE:
                    raise _refuse(old, f"the untuned model now answers {pid!r} otherwise ({fresh['answer'][:60]!r}, "
                                       f"score {fresh['score']:.4f}; saved {saved['answer'][:60]!r}, "
                                       f"{saved['score']:.4f})")
            log(f"reuse: batch {index + 1}/{len(batches)} of {name} answered again: the same")
    return checked


def reuse_base_answers(build: Build, old: Path, chat: ChatModel | None = None) -> int:
    """Take the old folder's ``base`` answers as this build's saved ``base`` progress (see the
    module's docstring); the number of answers taken. Nothing is done when ``base`` is done."""
    old = Path(old)
    if build.path(f"{BASE}.json").exists():
        log(f"reuse: {BASE}.json exists already; nothing taken from {old}")
        return 0
    reused = reusable_answers(build, old)
    checked = check_answers_now(build, chat or load_base_chat(), old, reused)
    for name, answers in reused.items():
        write_json(build.path(f"{name}.partial.json"), answers)
    n = sum(len(a) for a in reused.values())
    write_json(build.path(RECORD), {"from": str(old.resolve()), "key": read_json(old / "recipe.json")["key"],
                                    "answers": n, "checked_batches": checked})
    log(f"reuse: {n} base answers taken from {old}")
    return n


# --- ``build --reuse-lora-passes-from OLD``: the same prompts, the first LoRA passes unchanged ------
LORA_RECORD = "lora_reused.json"


def _settings_that_differ(old_config: dict, new_config: dict) -> list[str]:
    """The settings of two configurations that differ, other than the LoRA passes and
    ``lora.max_minutes`` (a cap)."""
    old_lora, new_lora = old_config["lora"], new_config["lora"]
    top = {k for k in old_config.keys() | new_config.keys() if k != "lora" and old_config.get(k) != new_config.get(k)}
    lora = {f"lora.{k}" for k in old_lora.keys() | new_lora.keys()
            if k not in ("passes", "max_minutes") and old_lora.get(k) != new_lora.get(k)}
    return sorted(top | lora)


def _shared_passes(old_passes: list[dict], new_passes: list[dict]) -> int:
    """How many leading LoRA passes the two configurations share."""
    shared = 0
    for old_pass, new_pass in zip(old_passes, new_passes):
        if old_pass != new_pass:
            break
        shared += 1
    return shared


def reuse_lora_passes(build: Build, old: Path) -> int:
    """Take an older folder's ``base`` answers and its first LoRA passes (``adapter.pass{i}``) when
    the old recipe read the same prompts and differs from this one only in the later passes.

    A pass reads the adapter before it, the examples (prompts and ``base`` answers) and its own
    settings, draws and shuffles its examples with seeds of its own, and dropout is 0: the passes
    taken are the ones this build would train, and ``lora`` resumes after them as after an
    interruption. The number of passes taken; nothing is done when ``lora`` is done."""
    old = Path(old)
    if build.path("adapter").exists():
        log(f"reuse: the adapter exists already; nothing taken from {old}")
        return 0
    recipe = _finished_base_recipe(old, "--reuse-lora-passes-from")

    def refuse(why: str) -> ValueError:
        return ValueError(f"cannot reuse the LoRA passes of {old}: {why}. Drop --reuse-lora-passes-from.")

    if recipe["key"] != recipe_key(recipe["config"], build.prompts_read()):
        raise refuse("it read other prompts than this build does")
    config = json.loads(json.dumps(asdict(build.config)))  # as recipe.json keeps it (tuples as lists)
    differ = _settings_that_differ(recipe["config"], config)
    if differ:
        raise refuse(f"settings {', '.join(differ)} differ from this build's")
    shared = _shared_passes(recipe["config"]["lora"]["passes"], config["lora"]["passes"])
    taken = []
    for i in range(1, shared + 1):
        if not (old / f"adapter.pass{i}").is_dir():
            break
        taken.append(i)
    if not taken:
        raise refuse(f"it has no finished pass that this recipe shares ({shared} shared)")
    early = [i for i in taken if read_json(old / f"adapter.pass{i}" / "training_log.json").get("stopped_early")]
    if early:
        raise refuse(f"pass {early[0]} stopped early at its time cap")
    if not build.path(f"{BASE}.json").exists():
        write_atomic(build.path(f"{BASE}.json"), lambda tmp: shutil.copyfile(old / f"{BASE}.json", tmp))
    for i in taken:
        if not build.path(f"adapter.pass{i}").exists():
            with atomic_dir(build.path(f"adapter.pass{i}")) as tmp:
                shutil.copytree(old / f"adapter.pass{i}", tmp, dirs_exist_ok=True)
    write_json(build.path(LORA_RECORD), {"from": str(old.resolve()), "key": recipe["key"], "passes": taken})
    log(f"reuse: the base answers and LoRA passes {taken} taken from {old}")
    return len(taken)
