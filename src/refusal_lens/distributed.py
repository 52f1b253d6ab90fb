"""Data-parallel runs: one process per GPU (or CPU share), torch.distributed, launched by torchrun.

Every process runs the same program, the pipeline stage by stage. The batched operations
(scoring, feature and residual reading, generation, judging, attribution, the search's pair
evaluation) each split their prompt-level work over the processes (``map_shards``: this
process's contiguous share of the items, computed locally, then gathered in order), so every
process ends up with every result and takes the same decisions. Rank 0 alone writes the run
folder (``artifacts.write_atomic`` skips the writes of the others there).

``torchrun --nproc-per-node N …`` (or ``accelerate launch``) sets ``RANK`` / ``WORLD_SIZE``;
``data_parallel()`` then joins the process group: NCCL when there is a GPU (each process on
the GPU of its ``LOCAL_RANK``), gloo on the CPU. Every collective has a timeout
(``REFUSAL_LENS_DIST_TIMEOUT_S``, default 1800 s): a process that died or hangs makes the
others fail with a ``DistributedError`` that says so, and torchrun then stops them all.
Outside such a launch every function here is a no-op on one process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

T = TypeVar("T")

TIMEOUT_ENV = "REFUSAL_LENS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A collective failed: another process died, hung, or disagreed."""


class _State:
    enabled = False      # joined by data_parallel(): the batched operations shard
    created = False      # the process group is ours to destroy
    local_depth = 0      # > 0 inside local(): no sharding
    timeout_s = DEFAULT_TIMEOUT_S


def launched() -> bool:
    """This process was started by torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds.") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {value}.")
    return seconds


@contextmanager
def data_parallel() -> Iterator[bool]:
    """Join the process group of a torchrun launch for the span of the block (yields whether
    this is a data-parallel run); the group is left again at the end if this block made it."""
    if not launched() or _State.enabled:
        yield _State.enabled
        return
    _State.timeout_s = timeout_s()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # a timeout raises here, not in a watchdog
            torch.cuda.set_device(my_gpus()[0])
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=_State.timeout_s))
        except Exception as error:
            raise DistributedError(f"Could not join the torchrun process group ({error}).") from error
        _State.created = True
    _State.enabled = True
    try:
        yield True
    finally:
        _State.enabled = False
        if _State.created:
            _State.created = False
            dist.destroy_process_group()


def process_gpus(local_rank: int, local_processes: int, gpus: int) -> list[int]:
    """The GPUs of process ``local_rank`` of ``local_processes`` on a machine with ``gpus``: an
    equal share each, in order (one GPU each when there are as many processes as GPUs; a model
    spread with ``--device-map auto`` over its process's share otherwise)."""
    share = gpus // local_processes
    if share < 1:
        raise ValueError(f"{local_processes} processes on this machine but {gpus} GPUs: start at most one process "
                         f"per GPU (torchrun --nproc-per-node {gpus}).")
    return list(range(local_rank * share, (local_rank + 1) * share))


def my_gpus() -> list[int]:
    """This process's GPUs (``process_gpus`` for torchrun's ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE``)."""
    return process_gpus(int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                        torch.cuda.device_count())


def _joined() -> bool:
    return _State.enabled and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _joined() else 0


def world_size() -> int:
    return dist.get_world_size() if _joined() else 1


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """Batched operations shard their work now: a data-parallel run, outside ``local()``."""
    return _joined() and world_size() > 1 and _State.local_depth == 0


@contextmanager
def local() -> Iterator[None]:
    """Operations inside run on this process's items only (an operation already sharded)."""
    _State.local_depth += 1
    try:
        yield
    finally:
        _State.local_depth -= 1


def shard_bounds(n: int, of_rank: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of this process's contiguous share of ``n`` items (sizes differ by at most 1)."""
    r = rank() if of_rank is None else of_rank
    size, extra = divmod(n, world_size())
    start = r * size + min(r, extra)
    return start, start + size + (r < extra)


def shard(items: Sequence[T]) -> list[T]:
    start, stop = shard_bounds(len(items))
    return list(items[start:stop])


def map_shards(items: Sequence[T], work: Callable[[list[T]], Any]) -> Any:
    """``work(items)``, its items split over the processes: each runs its share and the results
    are gathered in order (``gather``). On one process: ``work(list(items))``."""
    if not active():
        return work(list(items))
    with local():
        mine = work(shard(items))
    return gather(mine)


# --- collectives ---------------------------------------------------------------------------
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _collective(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as error:
        raise DistributedError(
            f"Process {rank()} of {world_size()}: {what} did not complete ({_first_line(error)}). Another "
            f"process died or hung (collectives time out after {_State.timeout_s:g} s; set {TIMEOUT_ENV} to "
            "change it). The run stops; stages finished so far are kept and the same command resumes.") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _all_gather_bytes(data: bytes, what: str) -> list[bytes]:
    device = _comm_device()
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    _collective(what, lambda: dist.all_gather(sizes, size))
    longest = max(int(s) for s in sizes)
    payload = torch.zeros(longest, dtype=torch.uint8, device=device)
    if data:
        payload[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    parts = [torch.empty_like(payload) for _ in range(world_size())]
    _collective(what, lambda: dist.all_gather(parts, payload))
    return [bytes(p[:int(s)].cpu().numpy()) for p, s in zip(parts, sizes)]


def gather_json(value: Any, what: str = "gathering results") -> list[Any]:
    """Every process's JSON-able ``value``, in rank order."""
    if not _joined():
        return [value]
    return [json.loads(b) for b in _all_gather_bytes(json.dumps(value).encode(), what)]


def gather_tensor_dicts(tensors: dict[str, torch.Tensor],
                        what: str = "gathering tensors") -> list[dict[str, torch.Tensor]]:
    """Every process's ``{name: tensor}`` (on the CPU), in rank order."""
    if not _joined():
        return [{k: v.detach().cpu() for k, v in tensors.items()}]
    data = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}) if tensors else b""
    return [load_tensors(b) if b else {} for b in _all_gather_bytes(data, what)]


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, list):
        if not value:
            return "empty"
        return "tensors" if all(isinstance(v, torch.Tensor) for v in value) else "json"
    raise TypeError(f"Cannot gather a {type(value).__name__}: use a tensor or a list.")


def gather(value: Any, what: str = "gathering results") -> Any:
    """Concatenate every process's ``value`` in rank order: a tensor along dim 0 (on the CPU), a
    list of tensors, or a list of JSON-able items. A process with no items may give ``[]``."""
    kind = _kind(value)
    if not _joined():
        return value
    kinds = {k for k in gather_json(kind, what) if k != "empty"}
    if len(kinds) > 1:
        raise DistributedError(f"{what}: the processes returned different kinds of results ({sorted(kinds)}).")
    common = kinds.pop() if kinds else "empty"
    if common == "empty":
        return []
    if common == "json":
        return [item for part in gather_json(value, what) for item in part]
    if common == "tensor":
        parts = gather_tensor_dicts({"t": value} if kind == "tensor" else {}, what)
        return torch.cat([d["t"] for d in parts if d])
    parts = gather_tensor_dicts({str(i): v for i, v in enumerate(value)}, what)
    return [d[str(i)] for d in parts for i in range(len(d))]


def all_reduce_sum(tensor: torch.Tensor, what: str = "summing over processes") -> torch.Tensor:
    """The sum of ``tensor`` over the processes (a new tensor on ``tensor``'s device)."""
    if not _joined() or world_size() == 1:
        return tensor
    work = tensor.detach().to(_comm_device(), copy=True)
    _collective(what, lambda: dist.all_reduce(work, op=dist.ReduceOp.SUM))
    return work.to(tensor.device)


def broadcast_json(value: Any, what: str = "sharing rank 0's decision") -> Any:
    """Rank 0's ``value``, on every process."""
    if not _joined() or world_size() == 1:
        return value
    return gather_json(value if is_main() else None, what)[0]


def barrier(what: str = "waiting for every process") -> None:
    """Wait for every process; one that does not come within the timeout fails the run here."""
    if not _joined() or world_size() == 1:
        return
    if dist.get_backend() == "gloo":  # names the missing rank in its error
        _collective(what, lambda: dist.monitored_barrier(timeout=timedelta(seconds=_State.timeout_s)))
    else:
        _collective(what, lambda: dist.barrier(device_ids=[torch.cuda.current_device()]))
