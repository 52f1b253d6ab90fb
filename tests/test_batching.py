"""Batches sized to the device: the back-off on out-of-memory (injected: this is the CPU), the size
measured from a chunk's peak (a fake memory probe), the sizes remembered, and the batched
operations wired to it."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from refusal_lens import batching
from refusal_lens.batching import BatchKey, BatchTooLargeError, fitting_size, forget_sizes, known_size, map_batches
from refusal_lens.generation import generate
from refusal_lens.models.batches import batch_key, longest_prompt
from refusal_lens.scoring import refusal_scores

KEY = BatchKey("model", "cuda:0", "op", 64)


@pytest.fixture(autouse=True)
def fresh_sizes():
    forget_sizes()
    yield
    forget_sizes()


def oom_above(limit: int, calls: list[int]):
    """A chunk function that runs out of memory on more than ``limit`` rows (records every call)."""

    def run(chunk: list[int]) -> list[int]:
        calls.append(len(chunk))
        if len(chunk) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return [x * 10 for x in chunk]

    return run


class FakeMemory:
    """``free`` bytes free; a chunk peaks at ``per_row`` bytes a row."""

    def __init__(self, free: int, per_row: int):
        self.free, self.per_row, self.rows, self.released = free, per_row, 0, 0

    def start(self) -> None:
        self.rows = 0

    def measure(self) -> tuple[int, int]:
        return self.free, self.per_row * self.rows

    def release(self) -> None:
        self.released += 1


def test_a_set_batch_size_is_used_as_it_is():
    calls = []
    out = map_batches(list(range(10)), oom_above(100, calls), batch_size=4, default=16, key=KEY)
    assert calls == [4, 4, 2] and [x for chunk in out for x in chunk] == [x * 10 for x in range(10)]
    assert known_size(KEY) is None


def test_a_set_batch_size_that_does_not_fit_says_what_to_do():
    with pytest.raises(BatchTooLargeError, match="Lower the batch size, or leave it unset"):
        map_batches(list(range(10)), oom_above(2, []), batch_size=4, default=16, key=KEY)


def test_unset_without_a_memory_probe_keeps_the_default_size():
    calls = []
    map_batches(list(range(40)), oom_above(100, calls), batch_size=None, default=16, key=KEY)
    assert calls == [16, 16, 8]


def test_out_of_memory_halves_the_batch_retries_it_and_remembers_the_size():
    calls, memory = [], FakeMemory(free=10**12, per_row=1)
    out = map_batches(list(range(23)), oom_above(5, calls), batch_size=None, default=16, key=KEY, memory=memory)
    assert [x for chunk in out for x in chunk] == [x * 10 for x in range(23)]  # every item once, in order
    assert calls[:3] == [16, 8, 4]                                              # halved twice, then ran
    assert set(calls[3:]) == {4, 3} and sum(c for c in calls if c <= 5) == 23
    assert known_size(KEY) == 4 and memory.released == 2
    again = []
    map_batches(list(range(8)), oom_above(5, again), batch_size=None, default=16, key=KEY, memory=memory)
    assert again == [4, 4]  # remembered for the key: no second out-of-memory
    other = []
    longer = BatchKey("model", "cuda:0", "op", 128)
    map_batches(list(range(8)), oom_above(5, other), batch_size=None, default=2, key=longer)
    assert other == [2, 2, 2, 2]  # another length bucket starts afresh


def test_one_row_that_does_not_fit_is_a_clear_error():
    with pytest.raises(BatchTooLargeError, match="One row of op does not fit"):
        map_batches([1, 2, 3], oom_above(0, []), batch_size=None, default=4, key=KEY)


def test_the_size_grows_to_what_the_first_chunk_measured_fits():
    memory = FakeMemory(free=100_000, per_row=1_000)
    calls = []

    def run(chunk):
        memory.rows = len(chunk)
        calls.append(len(chunk))
        return chunk

    map_batches(list(range(300)), run, batch_size=None, default=16, key=KEY, memory=memory)
    fits = fitting_size(100_000, 16_000, 16)
    assert fits == 80  # 0.85 * 100 kB / 1 kB a row = 85, a multiple of 8
    assert calls[0] == 16 and calls[1:-1] == [fits] * (len(calls) - 2) and sum(calls) == 300
    assert known_size(KEY) == fits


def test_growth_stays_below_a_size_that_ran_out_of_memory():
    memory = FakeMemory(free=10**9, per_row=1)
    calls = []

    def run(chunk):
        memory.rows = len(chunk)
        calls.append(len(chunk))
        if len(chunk) > 12:
            raise torch.OutOfMemoryError("fake")
        return chunk

    map_batches(list(range(100)), run, batch_size=None, default=16, key=KEY, memory=memory)
    assert calls[:2] == [16, 8] and max(calls[2:]) <= 8  # an out-of-memory error ends the measuring


def test_fitting_size_rounds_and_caps():
    assert fitting_size(10**15, 1, 1) == batching.MAX_BATCH
    assert fitting_size(1000, 100 * 7, 7) == 8          # 8.5 rows -> 8
    assert fitting_size(1000, 1000 * 3, 3) == 1          # never below one row
    assert fitting_size(10**15, 1, 1, too_big=100) == 96  # below the size that failed, a multiple of 8


def inject_oom(chat_model, above: int):
    """A forward pre-hook on the model that runs out of memory on batches of more than ``above`` rows."""
    seen = []

    def hook(_module, args, kwargs):
        rows = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[0]
        seen.append(rows)
        if rows > above:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    return chat_model.model.register_forward_pre_hook(hook, with_kwargs=True), seen


def test_refusal_scores_back_off_and_give_the_scores_of_small_batches(llama):
    prompts = PROMPTS * 3
    expected = refusal_scores(llama, prompts, batch_size=1)
    handle, seen = inject_oom(llama, above=3)
    try:
        got = refusal_scores(llama, prompts)
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert seen == [12, 6, 3, 3, 3, 3]  # 12 prompts: 16 by default on the CPU, halved twice
    assert known_size(batch_key(llama, "refusal_scores", longest_prompt(llama, prompts))) == 3


def test_generation_backs_off_inside_generate_and_keeps_its_answers(llama):
    expected = generate(llama, PROMPTS, max_new_tokens=4, batch_size=1)
    handle, _seen = inject_oom(llama, above=1)
    try:
        got = generate(llama, PROMPTS, max_new_tokens=4)
    finally:
        handle.remove()
    assert got == expected
    assert known_size(batch_key(llama, "generate", longest_prompt(llama, PROMPTS, 4))) == 1


def test_the_cuda_probe_measures_every_gpu_of_a_split_model_and_the_tightest_decides(monkeypatch):
    """torch.cuda's counters, faked (no GPU here): GPU 1 has less room for what a row costs it."""
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    free = {0: 60 << 30, 1: 20 << 30}
    allocated = {0: 10 << 30, 1: 30 << 30}
    peak = {0: 12 << 30, 1: 34 << 30}        # a chunk uses 2 GiB on GPU 0 and 4 GiB on GPU 1
    index = lambda device: torch.device(device).index  # noqa: E731
    for name, fake in {"synchronize": lambda device=None: None, "reset_peak_memory_stats": lambda device=None: None,
                       "mem_get_info": lambda device: (free[index(device)], 80 << 30),
                       "memory_allocated": lambda device: allocated[index(device)],
                       "memory_reserved": lambda device: allocated[index(device)] + (1 << 30),
                       "max_memory_allocated": lambda device: peak[index(device)],
                       "is_available": lambda: True}.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    probe = batching.memory_probe([torch.device("cpu"), *gpus, gpus[0]])
    assert probe.devices == gpus
    probe.start()
    assert probe.measure() == (21 << 30, 4 << 30)  # GPU 1: 21 GiB free (1 cached) for 4 GiB a chunk
    assert batching.memory_probe("cpu") is None
