"""Asynchronous checkpoints: the state copied off the device, written by one background thread.

`stage` copies every tensor of a checkpoint into host memory that this process keeps between saves (pinned when
CUDA is present, so the device-to-host copies are asynchronous DMA), and every container, so that training may
change the live state the moment it returns. `BackgroundWriter` runs one write at a time: a save that finds the
previous one still writing waits for it, and says so in the log; ``wait`` is what the end of ``fit``, a
preemption and an exception call. An error of a background write is raised on the training thread at the next
save or wait, never dropped.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dltrain.errors import CheckpointError

log = logging.getLogger("dltrain.checkpoint")


class Staging:
    """Host buffers reused from one save to the next (keyed by where a tensor sits in the checkpoint)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def stage(self, obj: Any) -> Any:
        """A copy of ``obj`` whose tensors live in this staging's host buffers.

        On CUDA the copies are queued on the current stream and waited for before returning.
        """
        seen: dict[tuple[Any, ...], None] = {}
        out = self._copy(obj, (), seen)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.current_stream().synchronize()
        for key in [k for k in self._buffers if k not in seen]:  # state that is gone (a pruned parameter)
            del self._buffers[key]
        return out

    def _copy(self, obj: Any, where: tuple[Any, ...], seen: dict[tuple[Any, ...], None]) -> Any:
        if isinstance(obj, torch.Tensor):
            seen[where] = None
            return self._tensor(obj, where)
        if isinstance(obj, dict):
            return {k: self._copy(v, (*where, k), seen) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._copy(v, (*where, i), seen) for i, v in enumerate(obj)]
        if type(obj) is tuple:  # a named tuple (a subclass) is deep-copied below, keeping its type
            return tuple(self._copy(v, (*where, i), seen) for i, v in enumerate(obj))
        if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
            return obj
        return copy.deepcopy(obj)

    def _tensor(self, t: torch.Tensor, where: tuple[Any, ...]) -> torch.Tensor:
        t = t.detach()
        buffer = self._buffers.get(where)
        if (buffer is None or buffer.shape != t.shape or buffer.dtype != t.dtype or buffer.layout != t.layout
                or not t.is_contiguous()):
            pin = t.device.type == "cuda"
            buffer = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin) if t.is_contiguous() \
                else torch.empty_like(t, device="cpu")
            self._buffers[where] = buffer
        buffer.copy_(t, non_blocking=t.device.type == "cuda")
        return buffer


@dataclass
class AsyncSave:
    """What an asynchronous save needs.

    The writer thread, the host buffers, and (sharded checkpoints) the process group DCP's background write
    runs its collectives on, apart from training's.
    """

    writer: BackgroundWriter = field(default_factory=lambda: BackgroundWriter())
    staging: Staging = field(default_factory=Staging)
    group: Any = None

    def process_group(self) -> Any:
        """A gloo group of every rank for DCP's ``async_save``.

        Created at the first sharded save (every rank is there). Its planning collectives run on the writer
        thread and must not interleave with training's.
        """
        import torch.distributed as dist

        if self.group is None and dist.is_initialized():
            self.group = dist.new_group(backend="gloo")
        return self.group


class BackgroundWriter:
    """One checkpoint write in flight at most, on a thread of its own."""

    def __init__(self, name: str = "checkpoint") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._what = ""
        self._error: BaseException | None = None
        self.waits: list[float] = []  # seconds each save (or the end of fit) waited for the one in flight

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], None], what: str) -> None:
        """Run ``write`` in the background once the save in flight (if any) is done."""
        self.wait(f"the next save ({what})")
        self._what = what
        self._thread = threading.Thread(target=self._run, args=(write,), name=f"dltrain-{self._name}-writer",
                                        daemon=False)  # the interpreter waits for a write it has started
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as err:  # raised on the training thread at the next save or wait
            self._error = err

    def wait(self, reason: str, *, raise_error: bool = True) -> bool:
        """Block until the save in flight is written.

        Log how long when it was still writing. Raises the error of a failed background write (as a
        `CheckpointError` naming the checkpoint); with ``raise_error=False`` logs it and returns False. True:
        no write failed.
        """
        thread = self._thread
        if thread is not None and thread.is_alive():
            started = time.perf_counter()
            thread.join()
            waited = time.perf_counter() - started
            self.waits.append(waited)
            log.warning("[dltrain] waited %.2f s for the checkpoint save in flight (%s) before %s", waited,
                        self._what, reason)
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            if not raise_error:
                log.error("[dltrain] the background checkpoint save of %s failed: %s: %s", self._what,
                          type(error).__name__, error)
                return False
            raise CheckpointError(f"the background checkpoint save of {self._what} failed: "
                                  f"{type(error).__name__}: {error}") from error
        return True


def is_async_checkpoint_io(plugin: Any) -> bool:
    """Whether ``plugin`` (an item of ``Trainer(plugins=[...])``) asks for asynchronous checkpoints.

    Lightning's own ``AsyncCheckpointIO`` (``lightning.pytorch.plugins.io`` or
    ``pytorch_lightning.plugins.io``), which dltrain recognises and maps onto
    ``ModelCheckpoint(async_save=True)`` (its ``checkpoint_io`` argument, a wrapped CheckpointIO, is not used:
    dltrain writes checkpoints itself).
    """
    return any(cls.__name__ == "AsyncCheckpointIO" and cls.__module__.split(".")[0] in ("lightning",
                                                                                         "pytorch_lightning")
               for cls in type(plugin).__mro__)
