"""Every shell command line that README.md and docs/*.md show exists as written: each is run
with --help appended (so the command and every option it names must parse), and the cheap ones
run for real, so the docs cannot drift from the CLI. The README's first two lines are what
`.ci/run` itself runs; the Python examples are tests/test_docs_examples.py's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refusal_lens.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {"NAME": "harmless-plain", "FILE.toml": "run.toml"}
runner = CliRunner()


LAUNCHED = r"^ {4}((?:torchrun|accelerate launch) .*?)\$\(which refusal-lens\) (.+?)\s*(?:#.*)?$"


def launched_lines(doc: str) -> list[tuple[str, str]]:
    """``torchrun ... $(which refusal-lens) ...`` lines: (the launcher's part, the command's part)."""
    return [(launcher.strip(), command) for launcher, command in re.findall(LAUNCHED, (ROOT / doc).read_text(), re.M)]


def command_lines(doc: str) -> list[str]:
    """``refusal-lens ...`` lines of code blocks and code spans, also those a launcher starts;
    ``a|b`` sub-commands expanded."""
    text = (ROOT / doc).read_text()
    found = re.findall(r"`((?:\.venv/bin/)?refusal-lens [^`]+)`", text)
    found += [f"refusal-lens {command}" for _, command in launched_lines(doc)]
    found += [line.strip() for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
              if lang in ("", "bash", "sh", "shell") for line in block.splitlines() if "refusal-lens " in line]
    found += re.findall(r"^ {4}(?:\./scripts/setup\.sh && )?(\.venv/bin/refusal-lens .+?)\s*(?:#.*)?$", text, flags=re.M)
    commands = []
    for line in found:
        line = line.split(" #")[0].split(" && ")[-1].strip().replace("\\|", "|")
        words = line.split()[1:]  # after `refusal-lens`
        cut = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        heads = [[]]
        for word in words[:cut]:  # `organism fetch|info|build|eval`: one command each
            heads = [[*h, alt] for h in heads for alt in word.split("|")]
        commands += [" ".join([*h, *words[cut:]]) for h in heads]
    return [c for c in commands if c]


def all_commands() -> list[tuple[str, str]]:
    return sorted({(doc, c) for doc in DOCS for c in command_lines(doc)})


def _args(command: str) -> list[str]:
    words = shlex.split(command)
    cut = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
    return [PLACEHOLDERS.get(w, w) for w in words[:cut]], words[cut:]


def test_the_docs_show_commands():
    assert len(all_commands()) >= 10, all_commands()


@pytest.mark.parametrize("doc, command", all_commands())
def test_every_documented_command_parses(doc, command):
    head, options = _args(command)
    # options as written (placeholder values are not converted before --help exits), so an
    # option the CLI does not know fails
    result = runner.invoke(app, [*head, *options, "--help"])
    assert result.exit_code == 0, f"{doc}: `refusal-lens {command}`\n{result.output}"


CHEAP = ["datasets list", "datasets show harmless-plain --n 5", "organism info", "organism fetch",
         "organism eval --limit 1"]


@pytest.mark.organism
@pytest.mark.parametrize("command", CHEAP)
def test_cheap_documented_commands_run(command):
    documented = {re.sub(r"\bNAME\b", "harmless-plain", c) for _, c in all_commands()}
    assert any(command.startswith(d) or d.startswith(command.split(" --")[0]) for d in documented), command
    result = runner.invoke(app, shlex.split(command))
    assert result.exit_code == 0, result.output


@pytest.mark.organism
def test_the_documented_organism_run_starts_with_the_defaults(tmp_path, monkeypatch):
    """`refusal-lens run --model organism --saes organism` (docs/ORGANISM.md): the config it builds
    is the defaults with those two names, before any stage runs."""
    import refusal_lens.pipeline.run as run_module
    from refusal_lens.pipeline.config import RunConfig

    seen = {}
    monkeypatch.setattr(run_module, "run_pipeline", lambda config, out, **_: seen.setdefault("config", config) and {})
    result = runner.invoke(app, ["run", "--model", "organism", "--saes", "organism", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert seen["config"] == RunConfig()


@pytest.mark.parametrize("launcher", sorted({launcher for doc in DOCS for launcher, _ in launched_lines(doc)}))
def test_documented_launchers_parse(launcher):
    """The torchrun / accelerate launch options the docs show, read by the launchers' own parsers."""
    words = shlex.split(launcher)
    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        get_args_parser().parse_args([*words[1:], "refusal-lens"])
    else:
        from accelerate.commands.launch import launch_command_parser

        launch_command_parser().parse_args([*words[2:], "refusal-lens"])


def test_the_docs_show_how_to_launch_on_many_gpus():
    assert {launcher.split()[0] for launcher, _ in launched_lines("README.md")} == {"torchrun", "accelerate"}


def build_command_lines() -> list[str]:
    """``python -m organism_build ...`` lines: the recipe's own CLI, run from a checkout."""
    found = set()
    for doc in DOCS:
        for line in re.findall(r"python -m organism_build(?: ([a-z]+))?", (ROOT / doc).read_text()):
            found.add(line)
    return sorted(found)


@pytest.mark.parametrize("sub", build_command_lines())
def test_documented_build_commands_parse(sub):
    import subprocess
    import sys

    command = [sys.executable, "-m", "organism_build", *([sub] if sub else []), "--help"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def script_command_lines() -> list[str]:
    """``python scripts/<name>.py SUB ...`` lines (a script run from a checkout, e.g. the report's screenshots)."""
    found = set()
    for doc in DOCS:
        found.update(re.findall(r"python (scripts/\w+\.py(?: [a-z]+)?)", (ROOT / doc).read_text()))
    return sorted(found)


def test_the_docs_show_the_screenshot_command():
    assert "scripts/report_browser.py screenshot" in script_command_lines()


@pytest.mark.parametrize("line", script_command_lines())
def test_documented_script_commands_parse(line):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, *line.split(), "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
