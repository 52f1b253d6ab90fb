"""Data-parallel runs on the CPU (gloo), under torchrun: the collectives, a process that dies or
hangs, and the organism pipeline on 2 processes giving the decisions and artifacts of 1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refusal_lens import distributed
from refusal_lens.pipeline import stages

SCRIPT = Path(__file__).with_name("distributed_script.py")
CLI = str(Path(sys.executable).parent / "refusal-lens")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
FLOAT_TOLERANCE = 1e-4  # |a - b| <= 1e-4 * (1 + |b|): batches made of other prompts round differently


def environment(**extra: str) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "REFUSAL_LENS_PROGRESS": "0", "PYTHONPATH": path, **extra}


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_contiguous_balanced_and_cover_every_item(monkeypatch, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    for n in range(0, 12):
        bounds = [distributed.shard_bounds(n, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_each_process_gets_its_share_of_the_gpus():
    assert distributed.process_gpus(0, 8, 8) == [0] and distributed.process_gpus(7, 8, 8) == [7]
    assert distributed.process_gpus(3, 4, 8) == [6, 7]  # a 2-GPU model replica a process
    assert distributed.process_gpus(1, 2, 5) == [2, 3]
    with pytest.raises(ValueError, match="at most one process per GPU"):
        distributed.process_gpus(0, 4, 2)


def test_one_process_needs_no_process_group():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.map_shards([1, 2], lambda part: [x * 3 for x in part]) == [3, 6]
    assert distributed.gather([1, 2]) == [1, 2]
    assert torch.equal(distributed.all_reduce_sum(torch.ones(2)), torch.ones(2))
    assert distributed.broadcast_json({"a": 1}) == {"a": 1}
    distributed.barrier()


@pytest.mark.parametrize("launcher", [TORCHRUN, ACCELERATE], ids=["torchrun", "accelerate launch"])
def test_collectives_on_two_processes(tmp_path, launcher):
    done = subprocess.run([*launcher, str(SCRIPT), "collectives", str(tmp_path)], env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2 and report["active"]
    assert report["scores"] == [2.0 * i for i in range(7)]
    assert report["texts"] == [f"item {i} on {0 if i < 4 else 1}" for i in range(7)]  # 4 + 3, in order
    assert report["ragged"] == [list(range(i)) for i in range(7)]
    assert report["one_item"] == [6]
    assert report["nested"] == [False] * 7  # inside a sharded operation nothing shards again
    assert report["sum"] == [2.0, 1.0] and report["decision"] == {"from": 0}
    assert report["files"] == ["written_by_0.json"]  # rank 0 alone writes the run folder


@pytest.mark.parametrize("mode", ["late", "dies"])
def test_a_process_that_hangs_or_dies_fails_the_run_in_bounded_time(tmp_path, mode):
    done = subprocess.run([*TORCHRUN, str(SCRIPT), mode, str(tmp_path)],  # the late process sleeps 600 s
                          env=environment(REFUSAL_LENS_DIST_TIMEOUT_S="5"), capture_output=True, text=True,
                          timeout=500)
    assert done.returncode != 0
    left = re.search(r"rank 0 left the collective after ([\d.]+) s", done.stderr)
    if mode == "dies" and left is None:  # torchrun saw the dead process first and stopped rank 0 itself
        assert "exitcode  : 3" in done.stderr and "Signal 15 (SIGTERM) received by PID" in done.stderr
        return
    assert float(left.group(1)) < 60, done.stderr[-3000:]  # the timeout is 5 s; a dead peer is noticed at once
    assert "DistributedError: Process 0 of 2: gathering results did not complete" in done.stderr
    if mode == "late":
        assert "Another process died or hung (collectives time out after 5 s" in done.stderr


def test_a_cheap_search_under_its_own_edit_on_two_processes_matches_one(tmp_path, llama):
    """The paper's tracks and the cheap ones (scored by their own evaluator, rows split over the
    processes; harmless KL computed whole in each) make the same decisions on 2 processes as on 1."""
    from distributed_script import cheap_search_report

    done = subprocess.run([*TORCHRUN, str(SCRIPT), "cheap_search", str(tmp_path)], env=environment(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = cheap_search_report(llama)
    assert [t["name"] for t in one["tracks"]] == ["prompt0/seed0", "prompt1/seed0", "prompt2/seed0",
                                                  "shared/seed0", "cheap/seed0"]
    assert_same(json.loads((tmp_path / "report.json").read_text()), one)


# --- the organism pipeline on 1 and on 2 processes ---------------------------------------------------

CONFIG = """
seed = 0
[model]
name = "organism"
device = "cpu"
[saes]
source = "organism"
[data]
n_train = 8
n_val = 3
n_search = 3
n_eval = 5
n_fm = 6
n_capability = 3
[direction]
variant = "last_position"
layer = 20
[candidates]
top_k = 6
layers = [21, 22]
[search]
seeds = [0]
per_prompt_limit = 1
rows_per_forward = 4
[interactions]
top_k = [4]
epochs = 2
max_features = 64
[attribution]
method = "atp"
n_prompts = 3
k = 4
layers = "candidates"
activation_difference = false
scales = [-1.0]
induce_values = [4.0]
select_by = "refusal_score"
[evaluation]
max_new_tokens = 6
n_random_sets = 1
batch_size = 3
attribution_baselines = ["cosine"]
n_random_clamps = 1
targeted = false
"""
NOT_COMPARED = {"cost", "created", "versions"}  # what the machine and the clock decide


def run(config: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    command = [*TORCHRUN[:-1], str(processes), CLI] if processes > 1 else [CLI]
    done = subprocess.run([*command, "run", "--config", str(config), "--out", str(out), "--until", "evaluation"],
                          env=environment(),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def assert_same(a, b, where: str = "results") -> None:
    """Equal, floats within FLOAT_TOLERANCE; everything else (sets, choices, verdicts, texts) exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= FLOAT_TOLERANCE * (1 + abs(b)), f"{where}: {a} vs {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def comparable(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    for key in NOT_COMPARED:
        results.pop(key)
    loop = results["search"]["greedy_loop"]
    loop.pop("wall_time_s")
    loop.pop("forward_passes")  # each process cuts its share of the rows into its own batches
    return results


def files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.organism
@pytest.mark.slow
def test_two_processes_give_the_decisions_and_artifacts_of_one(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    one, two = tmp_path / "one", tmp_path / "two"
    run(config, one, 1)
    run(config, two, 2)

    assert files(one) == files(two)  # the same stage folders (keys), exports, figures; nothing half-written
    assert not [f for f in files(two) if ".tmp" in f]
    assert_same(comparable(two), comparable(one))
    for name in files(one):  # every stage's result is in results.json; the other files:
        if name.startswith("feature_sets/"):
            assert (two / name).read_text() == (one / name).read_text(), name
        if name.endswith("checkpoint.json"):  # the search's tracks
            assert_same(json.loads((two / name).read_text()), json.loads((one / name).read_text()), name)
    direction_one, direction_two = (load_file(out / "direction.safetensors") for out in (one, two))
    for name, value in direction_one.items():
        torch.testing.assert_close(direction_two[name], value, rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)

    resumed = run(config, one, 2)  # the 1-process run's artifacts, reused under 2 processes
    assert resumed.stderr.count("reusing") == len(stages.names_until("evaluation")) and "forward passes" not in resumed.stderr
    assert_same(comparable(one), comparable(two))
