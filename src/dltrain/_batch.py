"""What the loops and callbacks need to know about a batch: its size and a short description for errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def batch_size_of(batch: Any) -> int:
    """The first dimension of the first tensor in ``batch`` (searched depth-first), 0 when there is none."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = batch.values()
    elif not isinstance(batch, (list, tuple)):
        return 0
    for item in batch:
        size = batch_size_of(item)
        if size:
            return size
    return 0


def describe_batch(batch: Any) -> str:
    """``Tensor(8, 3)``, ``tuple[Tensor(8, 3), Tensor(8,)]``, ``{'x': Tensor(8, 3)}``: for error messages."""
    if isinstance(batch, Tensor):
        return f"Tensor{tuple(batch.shape)}"
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__}[{', '.join(describe_batch(b) for b in batch[:4])}]"
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_batch(v)}" for k, v in list(batch.items())[:6]) + "}"
    return type(batch).__name__
