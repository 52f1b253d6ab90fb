"""A run killed by a real signal in the middle of the search resumes from its checkpoint and
ends with the results of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.organism, pytest.mark.slow]

CONFIG = """
[model]
name = "organism"
device = "cpu"
[saes]
source = "organism"
[data]
n_train = 16
n_val = 4
n_search = 3
n_eval = 4
n_fm = 8
[direction]
variant = "last_position"
layer = 20
[candidates]
top_k = 8
layers = [21, 22]
[attribution]
method = "atp"
k = 8
n_prompts = 2
layers = "candidates"
activation_difference = false
scales = [-1.0]
induce_values = [2.0]
select_by = "refusal_score"
[search]
seeds = [0, 1]
per_prompt_limit = 1
rows_per_forward = 8
"""
CLI = str(Path(sys.executable).parent / "refusal-lens")


def search(out: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([CLI, "search", "--config", str(config), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def search_result(out: Path) -> dict:
    stage = next((out / "stages").glob("search-*"))
    result = json.loads((stage / "result.json").read_text())
    result.pop("greedy_loop")  # wall time and forward passes: the resumed run did part of the work
    return result


def test_a_run_killed_mid_search_resumes_to_the_uninterrupted_result(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    killed = search(tmp_path / "killed", config)
    deadline = time.time() + 600
    while not list((tmp_path / "killed" / "stages").glob("search-*/checkpoint.json")):
        assert killed.poll() is None, "the run ended before the search wrote a checkpoint"
        assert time.time() < deadline, "no search checkpoint within 10 minutes"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    stage = next((tmp_path / "killed" / "stages").glob("search-*"))
    assert not (stage / "done.json").exists(), "killed after the search had finished: nothing was resumed"

    assert search(tmp_path / "killed", config).wait() == 0
    assert search(tmp_path / "clean", config).wait() == 0
    assert search_result(tmp_path / "killed") == search_result(tmp_path / "clean")
    assert not list((tmp_path / "killed").rglob("*.tmp*")), "a half-written file was left behind"
