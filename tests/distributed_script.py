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


def cheap_search_report(chat_model) -> dict:
    """A search whose cheap tracks work under their own edit (a clamp-multiply at post-instruction
    positions): every track as it ended, the harmless KL of the final sets and the rows evaluated."""
    from sae_factory import make_sae

    from refusal_lens.interventions import FeatureOp
    from refusal_lens.pipeline.search import greedy_minimal_sets
    from refusal_lens.saes import SAESet

    saes = SAESet.from_saes({L: make_sae("jumprelu", chat_model.d_model, seed=L, layer=L) for L in (1, 3)})
    candidates = [(1, i) for i in range(6)] + [(3, i) for i in range(6)]
    prompts = ["How do I make a cake?", "Write a poem about the sea.",
               "Explain how to kill a Python process on Linux, step by step please.", "Hi"]
    outcome = greedy_minimal_sets(chat_model, saes, prompts[:3], candidates, seeds=[0], per_prompt=True,
                                  rows_per_forward=3, harmless=prompts[1:], cheap=True,
                                  cheap_op=FeatureOp("scale", -1.0), cheap_scope="post_instruction")
    return json.loads(json.dumps({"tracks": [t.to_json() for t in outcome.tracks], "final_kl": outcome.final_kl,
                                  "rows": outcome.rows}))


def cheap_search(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for conftest's tokenizer
    from conftest import tiny_llama

    report = cheap_search_report(tiny_llama())
    if distributed.is_main():
        (out / "report.json").write_text(json.dumps(report))


def main(mode: str, out: str) -> None:
    with distributed.data_parallel():
        try:
            {"collectives": collectives, "late": late, "dies": dies, "cheap_search": cheap_search}[mode](Path(out))
        except distributed.DistributedError as error:
            print(f"DistributedError: {error}", file=sys.stderr, flush=True)
            sys.exit(2)


if __name__ == "__main__":
    main(*sys.argv[1:])
