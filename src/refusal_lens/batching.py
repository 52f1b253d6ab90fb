"""Batches sized to the device: the largest that fits, found by measuring, backed off on out-of-memory.

Every batched operation (scoring, feature and residual reading, generation, judging,
attribution, the search's pair evaluation) runs its chunks through ``map_batches``:

- a batch size the user set is used as it is (an out-of-memory error then says to lower it
  or leave it unset);
- an unset one (``None``) is sized automatically. On a GPU the first chunk runs at the
  operation's default size while its peak memory is measured; the size is then the largest
  whose planned peak fits ``MEMORY_FRACTION`` of the memory that was free, at most
  ``MAX_BATCH``. On an out-of-memory error the chunk is halved and retried. The size found
  is remembered for the rest of the process, per (model, device, operation, sequence-length
  bucket), so each operation measures once. A model split over GPUs is measured on each of
  them, and the tightest decides. Elsewhere (the CPU) the default size is used,
  as before, and only the back-off applies.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from refusal_lens.progress import make_progress

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 1024         # rows a batch never exceeds, however much memory is free
MEMORY_FRACTION = 0.85   # of the free memory a planned batch may use at its peak


@dataclass(frozen=True)
class BatchKey:
    """What a batch size found is remembered for."""

    model: str
    device: str
    operation: str
    length: int  # the sequence-length bucket: the longest sequence, rounded up to a power of two


def length_bucket(tokens: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(tokens, 1))))


class BatchTooLargeError(RuntimeError):
    """A batch does not fit in memory and cannot be made smaller."""


class MemoryProbe(Protocol):
    """Free memory and one chunk's peak, on the device(s) a batch runs on."""

    def start(self) -> None:
        """Note the free memory and start measuring one chunk's peak."""

    def measure(self) -> tuple[int, int]:
        """``(free, peak)`` bytes since ``start``: what was free, and the most the chunk used
        above what was allocated then; of the device where the two are tightest, when several."""

    def release(self) -> None:
        """Return cached memory after an out-of-memory error."""


class CudaMemory:
    def __init__(self, devices: Sequence[torch.device]):
        self.devices = list(dict.fromkeys(torch.device(d) for d in devices))
        self._free: dict[torch.device, int] = {}
        self._base: dict[torch.device, int] = {}

    def start(self) -> None:
        for device in self.devices:
            torch.cuda.synchronize(device)
            free, _total = torch.cuda.mem_get_info(device)
            allocated = torch.cuda.memory_allocated(device)
            # blocks torch holds but does not use are free for the next chunk too
            self._free[device] = free + torch.cuda.memory_reserved(device) - allocated
            self._base[device] = allocated
            torch.cuda.reset_peak_memory_stats(device)

    def measure(self) -> tuple[int, int]:
        found = []
        for device in self.devices:
            torch.cuda.synchronize(device)
            peak = max(1, torch.cuda.max_memory_allocated(device) - self._base[device])
            found.append((self._free[device] / peak, self._free[device], peak))
        _ratio, free, peak = min(found)
        return free, peak

    def release(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()


def memory_probe(devices: torch.device | str | Sequence[torch.device | str]) -> MemoryProbe | None:
    """The probe of the CUDA devices among ``devices`` (those a model split over GPUs runs on),
    or None when there is none (the CPU: batch sizes stay as they are)."""
    devices = [devices] if isinstance(devices, (str, torch.device)) else list(devices)
    cuda = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    return CudaMemory(cuda) if cuda and torch.cuda.is_available() else None


_sizes: dict[BatchKey, int] = {}     # the size that fits, found in this process
_too_big: dict[BatchKey, int] = {}   # the smallest size that ran out of memory


def known_size(key: BatchKey) -> int | None:
    """The batch size remembered for ``key``, if any."""
    return _sizes.get(key)


def forget_sizes() -> None:
    """Forget every batch size found (a benchmark comparing sizes wants a fresh start)."""
    _sizes.clear()
    _too_big.clear()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


def map_batches(items: Sequence[T], run: Callable[[list[T]], R], *, batch_size: int | None, default: int,
                key: BatchKey | Callable[[], BatchKey], memory: MemoryProbe | None = None,
                progress: str | None = None) -> list[R]:
    """``run`` on consecutive chunks of ``items``; one result per chunk, in order.

    ``batch_size`` set: chunks of that size. ``None``: sized automatically (module doc),
    starting at ``default``; ``memory`` (see ``memory_probe``) enables growing to fit the
    device. ``key`` may be a function, called only when an automatic size is needed.
    ``run`` must leave no trace of a chunk it did not finish (it is run again, halved).
    """
    items = list(items)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if default < 1:
        raise ValueError(f"default batch size must be at least 1, got {default}")
    automatic = batch_size is None
    resolved: BatchKey | None = None
    if automatic:
        resolved = key() if callable(key) else key
        size = _sizes.get(resolved, default)
        measure = memory is not None and resolved not in _sizes
    else:
        size, measure = batch_size, False
    results: list[R] = []
    done = 0
    with make_progress() if progress else nullcontext() as bar:
        task = bar.add_task(progress, total=len(items)) if bar is not None else None
        while done < len(items):
            chunk = items[done:done + size]
            if measure:
                memory.start()
            try:
                results.append(run(chunk))
            except torch.OutOfMemoryError as error:
                if not automatic:
                    raise BatchTooLargeError(
                        f"A batch of {len(chunk)} does not fit in the device's memory ({_first_line(error)}). "
                        "Lower the batch size, or leave it unset to size batches automatically.") from None
                if len(chunk) == 1:
                    raise BatchTooLargeError(
                        f"One row of {resolved.operation} does not fit in the device's memory "
                        f"({_first_line(error)}): shorten the prompts or use a device with more memory "
                        "(--device-map auto spreads the model over several GPUs).") from None
                failed = True
            else:
                failed = False
            if failed:  # outside the except block, so the failed chunk's tensors can be freed
                if memory is not None:
                    memory.release()
                _too_big[resolved] = min(_too_big.get(resolved, len(chunk)), len(chunk))
                size = _sizes[resolved] = max(1, len(chunk) // 2)
                measure = False
                continue
            done += len(chunk)
            if bar is not None:
                bar.advance(task, len(chunk))
            if measure:
                free, peak = memory.measure()
                size = _sizes[resolved] = fitting_size(free, peak, len(chunk), _too_big.get(resolved))
                measure = False
    return results


def fitting_size(free_bytes: int, peak_bytes: int, rows: int, too_big: int | None = None) -> int:
    """The largest batch whose peak, at ``peak_bytes / rows`` a row, fits ``MEMORY_FRACTION``
    of ``free_bytes``; a multiple of 8 from 8 on, at most ``MAX_BATCH``, below ``too_big``."""
    per_row = max(peak_bytes, 1) / rows
    size = int(free_bytes * MEMORY_FRACTION / per_row)
    limit = MAX_BATCH if too_big is None else min(MAX_BATCH, too_big - 1)
    size = max(1, min(size, limit))
    return size - size % 8 if size >= 8 else size


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
