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
    index = lambda device: torch.device(device).index
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


# --- every batched operation, its batch size unset: backs off, keeps every result, remembers ------
def sizes_of(operation: str) -> list[int]:
    """The batch sizes remembered for ``operation`` (any model, device, length)."""
    return [size for key, size in batching._sizes.items() if key.operation == operation]


def tiny_saes(chat_model, layers=(1, 3)):
    from sae_factory import make_sae

    from refusal_lens.saes import SAESet

    return SAESet.from_saes({L: make_sae("jumprelu", chat_model.d_model, seed=L, layer=L) for L in layers})


TWELVE = PROMPTS * 3  # 12 prompts: the CPU's first chunk of 16 takes them all; 12 -> 6 -> 3 fits


def _next_token_kl(llama, batch_size):
    from refusal_lens.capability import next_token_shift
    from refusal_lens.interventions import ActivationAddition

    push = ActivationAddition(torch.randn(llama.d_model, generator=torch.Generator().manual_seed(0)) * 3, layer=1)
    shift = next_token_shift(llama, TWELVE, interventions=[push], batch_size=batch_size)
    return torch.tensor(shift.kl), shift.top1_unchanged


def _mean_activations(llama, batch_size):
    from refusal_lens.attribution.feature_sets import mean_activations

    return mean_activations(llama, tiny_saes(llama), TWELVE, [1, 3], batch_size=batch_size)


def _firing_means(llama, batch_size):
    from refusal_lens.attribution.feature_sets import firing_means

    features = [(1, i) for i in range(0, 96, 7)] + [(3, i) for i in range(0, 96, 5)]
    return firing_means(llama, tiny_saes(llama), TWELVE, features, batch_size=batch_size)


def _last_token_residuals(llama, batch_size):
    from types import SimpleNamespace

    from refusal_lens.pipeline.probes import _last_token_residuals

    ctx = SimpleNamespace(chat_model=llama, config=SimpleNamespace(batch_size=batch_size))
    return {L: torch.from_numpy(v) for L, v in _last_token_residuals(ctx, TWELVE, [0, 2]).items()}


def _projection_values(llama, batch_size):
    from refusal_lens.targeting import projection_values

    direction = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    return projection_values(llama, direction, [1, 2], TWELVE, batch_size=batch_size).values


def _pinned_refusal_scores(llama, batch_size):
    from refusal_lens.analyses.pinned import pinned_refusal_scores
    from refusal_lens.interventions import FeatureOp

    return pinned_refusal_scores(llama, tiny_saes(llama), TWELVE, [(1, 4), (3, 9)], FeatureOp("scale", 3.0),
                                 pin=[(3, 2)], batch_size=batch_size)


def _pinned_generate(llama, batch_size):
    from refusal_lens.analyses.pinned import pinned_generate
    from refusal_lens.interventions import FeatureOp

    return pinned_generate(llama, tiny_saes(llama), TWELVE, [(1, 4)], FeatureOp("zero"), max_new_tokens=3,
                           batch_size=batch_size)


_PREFIX_CACHES: dict = {}


def _set_logits(llama, batch_size):
    from refusal_lens.interventions import FeatureOp
    from refusal_lens.pipeline.search import SetEvaluator
    from refusal_lens.prefix_cache import build_prefix_cache

    if id(llama) not in _PREFIX_CACHES:  # built once, before out-of-memory errors are injected (one forward pass)
        _PREFIX_CACHES[id(llama)] = build_prefix_cache(llama, PROMPTS, start=1)
    evaluate = SetEvaluator(llama, tiny_saes(llama), _PREFIX_CACHES[id(llama)], FeatureOp("zero"),
                            rows_per_forward=batch_size)
    pairs = [(p, s) for s in ([], [(1, 2)], [(3, 4), (3, 9)]) for p in range(len(PROMPTS))]  # 12 rows
    return torch.cat(evaluate.logits(pairs))


# the batch key's operation -> the call; a pinned prompt runs as two rows (its twin)
OPERATIONS = {"next_token_kl": _next_token_kl, "mean_activations": _mean_activations,
              "read_features": _firing_means, "last_token_residuals": _last_token_residuals,
              "projection_values": _projection_values, "pinned_refusal_scores": _pinned_refusal_scores,
              "pinned_generate": _pinned_generate, "set_evaluation": _set_logits}
ROWS_PER_ITEM = {"pinned_refusal_scores": 2}
SIZE_FOUND = {"mean_activations": 2}  # its CPU default is 8: 8 -> 4 -> 2 (the others': 12 -> 6 -> 3)


def assert_same(got, expected):
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, tuple):
        for a, b in zip(got, expected, strict=True):
            assert_same(a, b)
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    else:
        assert got == expected


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_batched_operation_backs_off_keeps_its_results_and_remembers_the_size(llama, operation):
    """An operation that ignored the automatic size would run its fixed batch into the injected
    out-of-memory error; one that lost or repeated a chunk while backing off would differ from
    one prompt at a time."""
    call, rows = OPERATIONS[operation], ROWS_PER_ITEM.get(operation, 1)
    expected = call(llama, 1)
    forget_sizes()
    handle, seen = inject_oom(llama, above=3 * rows)
    try:
        got = call(llama, None)
        assert sizes_of(operation) == [SIZE_FOUND.get(operation, 3)]  # remembered
        seen.clear()
        assert_same(call(llama, None), expected)      # and used: no more out-of-memory errors
        assert seen and max(seen) <= 3 * rows
    finally:
        handle.remove()
    assert_same(got, expected)


def test_next_token_kl_of_no_intervention_stays_exactly_zero_after_backing_off(llama):
    from refusal_lens.capability import BaseLogits, next_token_shift
    from refusal_lens.interventions import ActivationAddition

    base = BaseLogits(llama)
    push = ActivationAddition(torch.randn(llama.d_model, generator=torch.Generator().manual_seed(2)), layer=2)
    handle, _seen = inject_oom(llama, above=3)
    try:
        pushed = next_token_shift(llama, TWELVE, base, interventions=[push])  # measures: 12 -> 6 -> 3
        plain = next_token_shift(llama, TWELVE, base)                         # the same batches of 3
    finally:
        handle.remove()
    assert plain.kl == [0.0] * 12 and all(plain.top1_unchanged)
    assert min(pushed.kl) > 0
    assert sorted(len(batch) for batch in base._by_batch) == [3] * 4  # the base read once per batch


def test_capability_report_sizes_every_part_to_the_device(llama):
    from refusal_lens.capability import MCQuestion, capability_report
    from refusal_lens.interventions import ActivationAddition

    push = ActivationAddition(torch.randn(llama.d_model, generator=torch.Generator().manual_seed(3)) * 2, layer=1)
    questions = [MCQuestion(f"q{i}", f"Which is {i}?", ("one", "two"), ("A", "B"), i % 2) for i in range(12)]

    def report(batch_size):
        return capability_report(llama, TWELVE, {"push": [push], "noop": []}, mc_questions=questions,
                                 max_new_tokens=3, batch_size=batch_size)

    expected = report(1)
    handle, _seen = inject_oom(llama, above=3)
    try:
        got = report(None)
    finally:
        handle.remove()
    assert got["completions"] == expected["completions"]
    for name in ("push", "noop"):
        for part, field in (("cross_entropy", "per_prompt"), ("next_token", "per_prompt_kl")):
            assert got["methods"][name][part][field] == pytest.approx(expected["methods"][name][part][field],
                                                                       rel=1e-4, abs=1e-6)
        assert got["methods"][name]["multiple_choice"]["predicted"] == \
            expected["methods"][name]["multiple_choice"]["predicted"]
    assert got["methods"]["noop"]["next_token"]["kl_max"] == 0.0
    for operation in ("generate", "cross_entropy", "multiple_choice"):  # the KL is read in the cross-entropy's pass
        assert sizes_of(operation) == [3], operation
    assert sizes_of("next_token_kl") == []
