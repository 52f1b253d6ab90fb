"""Saved results: atomic writes, versions, and keys from the config that made them."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from refusal_lens import distributed

TRACKED_PACKAGES = ("refusal-lens", "torch", "transformers", "sae-lens", "peft", "scikit-learn", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    found = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    found["cuda"] = torch.version.cuda or "none"
    return found


def provenance(config: Any | None = None) -> dict:
    """What produced a result: versions, time, and the config (a pydantic model or a dict)."""
    record = {"versions": versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if config is not None:
        record["config"] = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return record


def stable_hash(payload: Any, length: int = 12) -> str:
    """A short hash of JSON-able data, independent of key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


_MAIN_WRITES: list[Path] = []  # folders only rank 0 of a data-parallel run writes into


@contextmanager
def written_by_main_process(folder: str | Path) -> Iterator[None]:
    """In a data-parallel run, only rank 0 writes files under ``folder`` for the span of the
    block: the other processes' ``write_atomic`` / ``atomic_dir`` there do nothing."""
    root = Path(folder).resolve()
    _MAIN_WRITES.append(root)
    try:
        yield
    finally:
        _MAIN_WRITES.remove(root)


def _not_ours(path: Path) -> bool:
    if not _MAIN_WRITES or distributed.is_main():
        return False
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in _MAIN_WRITES)


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def write_atomic(path: str | Path, writer) -> Path:
    """Call ``writer(tmp_path)`` then move the file into place: readers never see half a file.
    (Not on a process other than rank 0 under ``written_by_main_process``.)"""
    path = Path(path)
    if _not_ours(path):
        return path
    tmp = _atomic_target(path)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """``with atomic_dir(target) as tmp:`` write a folder into ``tmp``. It replaces ``target``
    only when the block succeeds and is deleted when it fails, so ``target`` is never half-written."""
    target = Path(target)
    if _not_ours(target):
        scratch = Path(tempfile.mkdtemp(prefix="refusal-lens-not-rank-0-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        # a folder cannot be renamed over a non-empty one: move the old one aside first
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_json(path: str | Path, payload: Any, *, indent: int | None = 2) -> Path:
    """``payload`` as JSON, atomically; ``indent=None`` writes it on one line (json's C encoder:
    several times faster for a large payload, e.g. a search checkpoint)."""
    def dump(tmp: Path) -> None:
        tmp.write_text(json.dumps(payload, indent=indent, default=_json_default) + "\n")

    return write_atomic(path, dump)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, Any] | None = None) -> Path:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(contiguous, str(tmp), metadata=meta))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _json_default(value: Any):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Cannot save {type(value).__name__} as JSON")
