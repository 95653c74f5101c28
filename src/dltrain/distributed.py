"""Keeping ranks from hanging on each other.

Under ``torchrun`` a rank that dies makes the agent stop the others. Without it (processes started another way),
or when a rank is stuck in a collective waiting for a rank that already left the loop, nothing would stop the
others until the collective timeout (30 minutes by default). The :class:`Watchdog` closes that gap: each rank
runs a thread that polls the process group's key-value store once a second;

- a rank that fails writes ``dltrain/error`` (rank, step, message) before it re-raises;
- a rank whose training data ran out writes ``dltrain/exhausted/<epoch>/<rank>`` with its batch count;

and every other rank's watchdog, seeing either, prints what happened and exits the process with status 1.

:func:`isolate_restart_round` keeps a ``torchrun --max-restarts`` round from connecting to the round before it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dltrain._compat import default_store, process_group_settings

# torchrun keeps its store across restarts (--max-restarts): keys carry the restart round, so a restarted job
# does not see the failure that made it restart.
_PREFIX = f"dltrain/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
_ERROR_KEY = f"{_PREFIX}/error"


def isolate_restart_round(strategy: Any) -> bool:
    """Create the default process group of a torchrun job in a store namespace of its own restart round.

    Why: since torch 2.5 the agent of a c10d/standalone rendezvous hosts the job's TCPStore
    (``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps that one store for all restart rounds, and
    ``init_process_group`` puts the process group's keys in it under names that do not change between rounds. Gloo's
    rendezvous has every rank write its listening address under such a key and read its peers' keys; in a restarted
    round a rank that gets there before a peer reads the *killed* round's address of that peer and fails to connect
    ("Connection refused" in ``connectFullMesh``; it was also seen to hang there, up to the process-group timeout).
    Which rank gets there first is a race, so restarts failed or hung now and then, more often on a loaded machine.

    So the group is created here, before ``Fabric.launch`` would, on a ``PrefixStore`` named by
    ``TORCHELASTIC_RESTART_COUNT`` over a client of the same agent store, with the backend, timeout and device the
    strategy would have used; Lightning then finds the group initialized and keeps it. Only for one agent (one
    torchrun, any number of local processes): with several nodes each agent counts its restarts itself and the
    counts can differ, so a per-round prefix could split the ranks; such jobs keep torch's behaviour (set
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun to get a fresh store every round). Returns whether it
    created the group.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE", "1") != "1":
        return False
    if not dist.is_available() or dist.is_initialized() or int(env.get("WORLD_SIZE", "1")) < 2:
        return False
    settings = process_group_settings(strategy)
    if settings is None:  # not one of Lightning's process-group strategies: leave it to the strategy
        return False
    backend: str = settings[0]
    timeout: timedelta = settings[1] or timedelta(minutes=30)
    device: torch.device = strategy.root_device
    client = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
    store = dist.PrefixStore(f"{_PREFIX}/pg", client)
    dist.init_process_group(
        backend,
        store=store,
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        timeout=timeout,
        device_id=device if device.type != "cpu" else None,  # as Lightning passes it
    )
    return True


def destroy_process_group_at_exit() -> None:
    """At interpreter exit, let gloo's worker threads finish, then destroy the default process group (once).

    Why: a gloo worker thread drops its reference to a finished collective (and so to the result tensors, which
    Python owns) just after it wakes the waiting main thread, and that drop takes the GIL. When the main thread
    keeps the GIL from there into interpreter finalization, the worker thread that then asks for it is ended in
    the middle of a C++ destructor, which aborts the process ("terminate called without an active exception",
    exit code -6) after all its work was done; torchrun reports a failed job. A DDP model keeps the group alive
    (its reducer holds it), so destroying the group alone does not stop those threads: the handler first sleeps
    in short slices, each of which hands the GIL to a waiting thread. (tests/distributed/_exit_after_collective.py
    aborted in 3 of 4 launches without the slices.) Registering it again (another Trainer in the same process) is
    harmless: a destroyed group is skipped.
    """
    if dist.is_available() and dist.is_initialized():
        atexit.register(_destroy_process_group)


_GIL_HANDOVER_SLICES = 20  # x 2 ms: a worker thread descheduled for longer than 40 ms at exit can still abort


def _destroy_process_group() -> None:
    if not dist.is_initialized():
        return
    for _ in range(_GIL_HANDOVER_SLICES):
        time.sleep(0.002)
    dist.destroy_process_group()


def _store() -> Any:
    try:
        return default_store()
    except RuntimeError:  # a backend without a store: no watchdog, the collective timeout still applies
        return None


def gather_ints(value: int, device: torch.device | str) -> list[int]:
    """Every rank's ``value``, in rank order (over the default process group).

    An all_reduce of one slot per rank rather than ``Fabric.all_gather``, which goes through
    ``torch.distributed.nn.functional.all_gather``, deprecated (a FutureWarning on every rank) since torch 2.14.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return [int(value)]
    slots = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    slots[dist.get_rank()] = int(value)
    dist.all_reduce(slots, op=dist.ReduceOp.SUM)
    return [int(v) for v in slots.tolist()]


def all_gather_tensor(tensor: torch.Tensor, group: Any = None, sync_grads: bool = False) -> torch.Tensor:
    """Every rank's ``tensor`` stacked along a new first dimension of size ``world_size``.

    ``tensor`` has the same shape on every rank. The tensor itself when no process group is initialized.

    ``sync_grads``: the result is differentiable, and the gradient reaching rank ``r``'s ``tensor`` is the sum
    over ranks of the gradients of their results' row ``r`` (each rank's loss depends on every rank's input):
    Lightning's ``all_gather(sync_grads=True)``. Without it the gather runs outside autograd. Written on
    ``torch.distributed`` directly: Fabric's goes through ``torch.distributed.nn.functional.all_gather``,
    deprecated since torch 2.14 (a FutureWarning on every rank).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    group = group if group is not None else dist.group.WORLD
    if sync_grads and torch.is_grad_enabled() and tensor.requires_grad:
        return _AllGather.apply(tensor, group)
    with torch.no_grad():
        return _gather_stacked(tensor, group)


def _gather_stacked(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format)
             for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


class _AllGather(torch.autograd.Function):
    """The gather as an autograd function: backward sums, over ranks, the gradient of each rank's row."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _gather_stacked(tensor, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # An all_reduce of the whole gradient, then this rank's row: what a reduce-scatter does, on every backend
        # (gloo has no reduce-scatter); the gathered tensors are small (embeddings, scores), so the extra traffic
        # is too.
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[dist.get_rank(ctx.group)], None


class Watchdog:
    """Stops this rank when another rank failed or left the training loop early (see the module docstring).

    The Trainer runs one per process under several processes; they talk through torch.distributed's store.

    Args:
        rank: this process's global rank.
        world_size: the number of processes.
        position: a callable returning ``(epoch, batch_idx, in_training_loop)`` of this rank now.
        poll_s: seconds between two looks at the store.
    """

    def __init__(self, rank: int, world_size: int, position: Any, poll_s: float = 1.0) -> None:
        self.rank = rank
        self.world_size = world_size
        self._position = position  # callable -> (epoch, batch_idx, in_training_loop)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._store = _store()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching in a daemon thread (nothing to watch with one process or without a store)."""
        if self._store is None or self.world_size < 2:
            return
        self._thread = threading.Thread(target=self._run, name="dltrain-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the thread ends at its next poll)."""
        self._stop.set()

    def report_error(self, step: int, exc: BaseException) -> None:
        """Tell the other ranks that this one failed (best effort: the store may be gone too)."""
        if self._store is None:
            return
        msg = f"rank {self.rank} failed at global step {step}: {type(exc).__name__}: {str(exc)[:2000]}"
        with contextlib.suppress(Exception):
            self._store.set(_ERROR_KEY, msg)

    def report_exhausted(self, epoch: int, batches: int) -> None:
        """Tell the other ranks that this one's training data of ``epoch`` ended after ``batches`` batches."""
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
