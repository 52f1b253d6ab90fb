"""scripts/heretic_comparison.py: heretic's inputs from a run folder, and the shared measurement."""

import json

import pytest
import tomllib
from conftest import tiny_llama

from scripts.heretic_comparison import PROMPT_FILES, build_parser, default_system_text, heretic_config, main, prepare

# heretic-llm 1.4.0's Settings fields this script writes (heretic/config.py), and DatasetSpecification's
HERETIC_SETTINGS = {"model", "dtypes", "device_map", "n_trials", "seed", "max_response_length", "export_strategy",
                    "system_prompt", "good_prompts", "bad_prompts", "good_evaluation_prompts", "bad_evaluation_prompts"}
SMOLLM_TEMPLATE = (  # the organism's chat template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("heretic")
    chat = tiny_llama()
    chat.tokenizer.chat_template = SMOLLM_TEMPLATE
    chat.model.save_pretrained(root / "model")
    chat.tokenizer.save_pretrained(root / "model")
    sets = {name: [{"id": f"p{i}", "text": f"{name} prompt number {i}", "category": None, "split": "test",
                    "score": 0.0} for i in range(3)]
            for name in ("harmful_train", "harmless_train", "harmful_val", "harmless_val", "harmful_eval",
                         "harmless_eval")}
    run = root / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"prompt_sets": sets, "config": {
        "model": {"name": str(root / "model"), "device": "cpu", "dtype": "float32"}}}))
    return run


def test_the_default_system_text_is_read_from_the_template():
    tokenizer = tiny_llama().tokenizer
    tokenizer.chat_template = SMOLLM_TEMPLATE
    assert default_system_text(tokenizer) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    assert default_system_text(tokenizer) is None  # this template writes no system turn of its own


def test_prepare_writes_heretics_inputs(run_dir, tmp_path):
    config = prepare(run_dir, tmp_path / "heretic")
    settings = tomllib.loads(config.read_text())
    assert set(settings) == HERETIC_SETTINGS
    assert settings["n_trials"] == 40 and settings["seed"] == 0 and settings["max_response_length"] == 48
    assert settings["system_prompt"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert settings["dtypes"] == ["float32"] and settings["device_map"] == "cpu"
    assert settings["model"] == str((run_dir.parent / "model").resolve())
    results = json.loads((run_dir / "results.json").read_text())
    for setting, (file, name) in PROMPT_FILES.items():
        assert settings[setting] == {"dataset": file}
        lines = (tmp_path / "heretic" / file).read_text().splitlines()
        assert lines == [p["text"] for p in results["prompt_sets"][name]]
        assert "eval" not in name


def test_config_strings_are_quoted_for_toml():
    settings = tomllib.loads(heretic_config('C:\\models\\"x"', 'Say "hi"\nthen stop'))
    assert settings["model"] == 'C:\\models\\"x"' and settings["system_prompt"] == 'Say "hi"\nthen stop'


def test_measure_the_run_model_against_itself(run_dir, tmp_path, capsys):
    out = tmp_path / "none.json"
    assert main(["measure", str(run_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_harmful"] == 3 and 0 <= result["harmful_refused"] <= 3
    assert result["kl"]["mean"] == pytest.approx(0, abs=1e-6) and result["kl"]["top1_unchanged"] == 1.0
    assert result["max_new_tokens"] == 48 and "harmless next-token KL" in capsys.readouterr().out


def test_measure_another_model(run_dir, tmp_path):
    other = tiny_llama(seed=5)
    other.tokenizer.chat_template = SMOLLM_TEMPLATE
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    assert main(["measure", str(run_dir), "--model", str(tmp_path / "other"), "--out", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["kl"]["mean"] > 0.01


def test_the_commands_docs_show_parse():
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "HERETIC.md").read_text()
    lines = re.findall(r"^python scripts/heretic_comparison\.py (.+)$", doc, flags=re.MULTILINE)
    assert len(lines) >= 4
    for line in lines:
        args, unknown = build_parser().parse_known_args(shlex.split(line))
        assert not unknown and args.command in ("prepare", "measure"), line
