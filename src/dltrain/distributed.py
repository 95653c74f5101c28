"""Keeping ranks from hanging on each other.

Under ``torchrun`` a rank that dies makes the agent stop the others. Without it (processes started another way),
or when a rank is stuck in a collective waiting for a rank that already left the loop, nothing would stop the
others until the collective timeout (30 minutes by default). The :class:`Watchdog` closes that gap: each rank
runs a thread that polls the process group's key-value store once a second;

- a rank that fails writes ``dltrain/error`` (rank, step, message) before it re-raises;
- a rank whose training data ran out writes ``dltrain/exhausted/<epoch>/<rank>`` with its batch count;

and every other rank's watchdog, seeing either, prints what happened and exits the process with status 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any

import torch.distributed as dist

# torchrun keeps its store across restarts (--max-restarts): keys carry the restart round, so a restarted job
# does not see the failure that made it restart.
_PREFIX = f"dltrain/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
_ERROR_KEY = f"{_PREFIX}/error"


def _store() -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # a backend without a store: no watchdog, the collective timeout still applies
        return None


class Watchdog:
    """Stops this rank when another rank failed or left the training loop early (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, position: Any, poll_s: float = 1.0) -> None:
        self.rank = rank
        self.world_size = world_size
        self._position = position  # callable -> (epoch, batch_idx, in_training_loop)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._store = _store()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._store is None or self.world_size < 2:
            return
        self._thread = threading.Thread(target=self._run, name="dltrain-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def report_error(self, step: int, exc: BaseException) -> None:
        """Tell the other ranks that this one failed (best effort: the store may be gone too)."""
        if self._store is None:
            return
        msg = f"rank {self.rank} failed at global step {step}: {type(exc).__name__}: {str(exc)[:2000]}"
        with contextlib.suppress(Exception):
            self._store.set(_ERROR_KEY, msg)

    def report_exhausted(self, epoch: int, batches: int) -> None:
        if self._store is None:
            return
        with contextlib.suppress(Exception):
            self._store.set(f"{_PREFIX}/exhausted/{epoch}/{self.rank}", str(batches))

    def _exit(self, msg: str) -> None:
        sys.stderr.write(f"[dltrain] rank {self.rank}: {msg}\n")
        sys.stderr.flush()
        os._exit(1)

    def _run(self) -> None:
        store = self._store
        while not self._stop.wait(self._poll_s):
            try:
                if store.check([_ERROR_KEY]):
                    other = store.get(_ERROR_KEY).decode()
                    if not other.startswith(f"rank {self.rank} "):
                        self._exit(f"stopping because {other}")
                epoch, batch_idx, training = self._position()
                if not training:
                    continue
                for r in range(self.world_size):
                    if r == self.rank:
                        continue
                    key = f"{_PREFIX}/exhausted/{epoch}/{r}"
                    if store.check([key]):
                        theirs = int(store.get(key).decode())
                        # Give the other rank's last collective a moment: it may simply be a step ahead.
                        if batch_idx >= theirs:
                            time.sleep(2 * self._poll_s)
                            epoch2, batch2, training2 = self._position()
                            if training2 and epoch2 == epoch and batch2 == batch_idx:
                                msg = (
                                    f"rank {r} ran out of training data after {theirs} batches in epoch {epoch}, "
                                    f"while rank {self.rank} is still at batch {batch_idx}: every rank must get "
                                    "the same number of batches (dltrain's StreamingDataset and map-style loaders "
                                    "do; check a custom sampler or IterableDataset)"
                                )
                                with contextlib.suppress(Exception):
                                    store.set(_ERROR_KEY, f"rank {self.rank} detected: {msg}")
                                self._exit(msg)
            except Exception:
                # The store went away (job ending): nothing left to watch.
                return
