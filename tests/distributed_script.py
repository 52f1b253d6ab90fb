"""Run by tests/test_distributed.py under torchrun (gloo, CPU): the collectives of
``refusal_lens.distributed``, and a process that dies or hangs.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_script.py MODE OUT
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from refusal_lens import distributed
from refusal_lens.artifacts import write_json, written_by_main_process


def collectives(out: Path) -> None:
    rank = distributed.rank()
    report = {"world": distributed.world_size(), "active": distributed.active()}
    items = list(range(7))
    report["scores"] = distributed.map_shards(items, lambda part: torch.tensor(part, dtype=torch.float32) * 2).tolist()
    report["texts"] = distributed.map_shards(items, lambda part: [f"item {i} on {rank}" for i in part])
    ragged = distributed.map_shards(items, lambda part: [torch.arange(i) for i in part])
    report["ragged"] = [t.tolist() for t in ragged]
    report["one_item"] = distributed.map_shards([5], lambda part: [x + 1 for x in part])  # a process has nothing
    report["nested"] = distributed.map_shards(items, lambda part: [distributed.active()] * len(part))
    report["sum"] = distributed.all_reduce_sum(torch.tensor([1.0, rank])).tolist()
    report["decision"] = distributed.broadcast_json({"from": rank})
    with written_by_main_process(out):
        write_json(out / f"written_by_{rank}.json", {"rank": rank})
    distributed.barrier()
    report["files"] = sorted(p.name for p in out.glob("written_by_*.json"))
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report))


def late(out: Path) -> None:
    """Rank 1 comes to the collective long after the timeout: rank 0 must fail, saying why."""
    distributed.barrier()  # both started
    if distributed.rank() == 1:
        time.sleep(600)
    waiting(lambda: distributed.gather_json("hello"))


def dies(out: Path) -> None:
    """Rank 1 dies before the collective."""
    distributed.barrier()
    if distributed.rank() == 1:
        os._exit(3)
    waiting(lambda: distributed.gather_json("hello"))


def waiting(collective) -> None:
    started = time.monotonic()
    try:
        collective()
    finally:
        print(f"rank {distributed.rank()} left the collective after {time.monotonic() - started:.1f} s",
              file=sys.stderr, flush=True)


def main(mode: str, out: str) -> None:
    with distributed.data_parallel():
        try:
            {"collectives": collectives, "late": late, "dies": dies}[mode](Path(out))
        except distributed.DistributedError as error:
            print(f"DistributedError: {error}", file=sys.stderr, flush=True)
            sys.exit(2)


if __name__ == "__main__":
    main(*sys.argv[1:])
