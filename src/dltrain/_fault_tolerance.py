"""Replica groups that survive each other (`dltrain.FaultTolerant`): torchft's `Manager` under dltrain's engine.

Per optimizer step, on every rank of every live group (the engine calls these; nothing else uses torchft):

1. `ReplicaGroups.start_step`: ask the lighthouse for the step's quorum (synchronously, so that a group that is
   behind receives the current state *before* its forward). A change of the quorum is logged, with how long this
   group waited for it.
2. `ReplicaGroups.average_gradients`: the gradients (already averaged inside the group by DDP) averaged over the
   groups of the quorum, one all-reduce of one flat buffer on the managed gloo process group. A failure (a peer
   died mid-step) is recorded by the manager, not raised.
3. `ReplicaGroups.commit`: torchft's vote; the optimizer steps only when it says so. A step that is not committed
   did not happen: no optimizer or scheduler step, the global step does not move, and the ledger does not record
   its batch (its samples are reported by ``dltrain audit`` as not trained).

Rank ``r`` of a group talks to rank ``r`` of the others (torchft's process group spans the groups per group rank),
so groups must have the same number of processes. A group that joins (a restart, or one that fell behind) receives
rank by rank what `replica_state` makes on a live group: weights, optimizer, schedulers, loop and callback states,
and that rank's loader position and RNG (rank ``r`` of every group is at the same position of its own share of the
epoch: the groups step in lockstep).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from dltrain.errors import ConfigurationError, DistributedError

if TYPE_CHECKING:
    from dltrain.strategies import FaultTolerant

__all__ = ["ReplicaGroups", "check_accumulation", "check_fault_tolerant_fit", "fault_tolerant_spec",
           "import_torchft"]


def fault_tolerant_spec(strategy: Any) -> FaultTolerant | None:
    """The `dltrain.FaultTolerant` given as ``Trainer(strategy=...)``, resolved.

    Returns:
        The specification with the environment read (torchft importable), or ``None`` for any other strategy.
    """
    from dltrain.strategies import FaultTolerant

    if not isinstance(strategy, FaultTolerant):
        return None
    import_torchft()
    return strategy.resolved()


def check_fault_tolerant_fit(task: Any, accumulate_grad_batches: int, callbacks: Iterable[Any] = ()) -> None:
    """Refuse, before training, what replica groups do not support yet (each error says why).

    `check_accumulation` runs again at every step's quorum: a callback may change ``accumulate_grad_batches``
    during the fit.

    Raises:
        ConfigurationError: manual optimization, gradient accumulation (also scheduled by a callback).
    """
    if not task.automatic_optimization:
        raise ConfigurationError(
            "strategy=dltrain.FaultTolerant does not support manual optimization (automatic_optimization=False) "
            "yet: each optimizer step must be agreed by the quorum of replica groups (torchft's commit vote) "
            "before it is taken, and dltrain only places that vote around the steps it takes itself. Use automatic "
            "optimization (one optimizer; several parameter groups are fine)")
    for callback in callbacks:  # GradientAccumulationScheduler (duck-typed: the callbacks are not imported here)
        scheduled = getattr(callback, "going_to_accumulate_grad_batches", None)
        if callable(scheduled) and scheduled():
            raise ConfigurationError(
                f"strategy=dltrain.FaultTolerant with {type(callback).__name__} (accumulation from some epoch on) "
                "is not supported yet: " + _ACCUMULATION)
    check_accumulation(accumulate_grad_batches)


_ACCUMULATION = ("the ledger records a batch only when its step is committed, and the batches of a window would "
                 "need their commit decided together. Use a larger batch per step, or accumulate_grad_batches=1")


def check_accumulation(accumulate_grad_batches: int) -> None:
    """Replica groups take one optimizer step per batch."""
    if accumulate_grad_batches != 1:
        raise ConfigurationError(
            f"strategy=dltrain.FaultTolerant with accumulate_grad_batches={accumulate_grad_batches} is not supported "
            "yet: " + _ACCUMULATION)


def import_torchft() -> Any:
    """torchft, or a ConfigurationError naming the extra that installs it."""
    # torchft's Rust side logs every quorum and commit at INFO; dltrain logs the quorum changes itself.
    # RUST_LOG=info in the environment shows torchft's lines again.
    os.environ.setdefault("RUST_LOG", "warn")
    try:
        import torchft
    except ImportError as exn:
        raise ConfigurationError(
            "strategy=dltrain.FaultTolerant(...) needs torchft: pip install 'dltrain[ft]'") from exn
    return torchft


class ReplicaGroups:
    """torchft's Manager for this rank: one quorum, gradient average and commit vote per optimizer step.

    Args:
        spec: the resolved `dltrain.FaultTolerant` (every field known).
        group_rank: this process's rank in its replica group.
        group_size: the number of processes of the group.
        broadcast: ``value -> rank 0's value`` inside the group (the group's own process group).
        state_dict: what this rank sends a group that joins (called on torchft's quorum thread while the
            training thread waits for the quorum).
        load_in_loop: applies what a live group sent to a group that fell behind while training (called on the
            training thread, inside `start_step`); at `join` the state is returned instead.
    """

    def __init__(self, spec: FaultTolerant, group_rank: int, group_size: int, broadcast: Callable[[Any], Any],
                 state_dict: Callable[[], dict[str, Any]], load_in_loop: Callable[[dict[str, Any]], None]) -> None:
        torchft = import_torchft()
        from torchft.manager import Manager

        assert spec.replica_group is not None and spec.replica_groups is not None and spec.lighthouse
        self.spec = spec
        self.group = spec.replica_group
        self.groups = spec.replica_groups
        self.group_rank = group_rank
        self._state_dict = state_dict
        self._load_in_loop = load_in_loop
        # torchft keeps its own keys in the group's store. A store of this launch's own (not torchrun's, which
        # outlives a restart of the group with the dead manager's address in it), hosted by the group's rank 0 at
        # an address the other groups can reach: they meet in it to build the cross-group process group.
        host = os.environ.get("MASTER_ADDR") or socket.gethostname()
        self._store = None
        if group_rank == 0:
            self._store = torch.distributed.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                                     timeout=timedelta(seconds=spec.timeout))
        port = int(broadcast(self._store.port if self._store is not None else 0))
        self.pg = torchft.ProcessGroupGloo(timeout=timedelta(seconds=spec.timeout))
        self.manager = Manager(
            pg=self.pg, min_replica_size=spec.min_replicas, load_state_dict=self._apply, state_dict=self._send,
            use_async_quorum=False, timeout=timedelta(seconds=spec.timeout),
            quorum_timeout=timedelta(seconds=spec.quorum_timeout), connect_timeout=timedelta(seconds=spec.timeout),
            rank=group_rank, world_size=group_size, store_addr=host, store_port=port,
            lighthouse_addr=spec.lighthouse, replica_id=f"dltrain_replica_group_{self.group}",
        )
        self.replicas = 0  # groups in the last quorum
        self.quorum_changes = 0
        self.healed = False  # this launch joined a running job: it received the state of a group ahead of it
        self.joined_at_ns = 0  # wall clock (ns) just before this launch's first quorum (the ledger records it)
        self.sent = 0  # states sent to joining groups since the last quorum
        self._in_loop = False
        self._received: dict[str, Any] | None = None
        self._quorum_ready = False  # `join`'s quorum is the first step's: the live groups are already in it

    # ------------------------------------------------------------------ the state a joining group receives
    def _send(self) -> dict[str, Any]:
        self.sent += 1
        return self._state_dict()

    def _apply(self, state: dict[str, Any]) -> None:
        self._received = state
        if self._in_loop:
            self._load_in_loop(state)

    # ------------------------------------------------------------------ one step
    def join(self, step: int) -> dict[str, Any] | None:
        """Join the first quorum of this launch, before training.

        A group that is behind the others (restarted) receives their state. When no group is ahead (a fresh
        start, or every group restarted from the same checkpoint) it waits until every group has joined, so that
        no group trains steps the others miss: the run stays that of one data-parallel job. At step 0 the groups
        that join take the weights of one of them (torchft's initial sync), which is not a rejoin (``healed``
        stays False).

        Returns:
            The state a live group sent (to restore the fit from), or ``None`` when none came.
        """
        self.joined_at_ns = time.time_ns()
        # torchft counts committed steps itself and heals the groups whose count is behind: start it where this
        # launch starts (0, or the step of the checkpoint it resumed from).
        self.manager.load_state_dict({"step": step, "batches_committed": 0})
        deadline = time.monotonic() + self.spec.quorum_timeout
        while True:
            self._quorum(step)
            if self.replicas >= self.groups or self.manager.current_step() > step:
                break
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"replica group {self.group} (rank {self.group_rank}): only {self.replicas} of {self.groups} "
                    f"replica groups joined within {self.spec.quorum_timeout:.0f} s of the start (lighthouse "
                    f"{self.spec.lighthouse}): start one launch per group with REPLICA_GROUP_ID=0..{self.groups - 1}"
                    ", or lower NUM_REPLICA_GROUPS")
            time.sleep(0.2)
        received, self._received = self._received, None
        self.healed = received is not None and self.manager.current_step() > step
        self._in_loop = True
        self._quorum_ready = True
        return received

    def start_step(self, step: int) -> None:
        """The quorum of the coming step (a group that fell behind receives the current state here)."""
        if self._quorum_ready:  # the live groups met this group in `join` and wait for this step's all-reduce
            self._quorum_ready = False
            return
        self._received = None
        self._quorum(step)

    def _quorum(self, step: int) -> None:
        before = self.replicas
        self.sent = 0
        started = time.monotonic()
        try:
            self.manager.start_quorum()
            replicas = self.manager.num_participants()
        except Exception as exn:
            raise DistributedError(
                f"replica group {self.group} (rank {self.group_rank}) at step {step}: no quorum from the lighthouse "
                f"at {self.spec.lighthouse} within {self.spec.quorum_timeout:.0f} s ({type(exn).__name__}: {exn}). "
                "Is the lighthouse running (dltrain lighthouse), and are enough replica groups alive for its "
                "--min-replicas?") from exn
        waited = time.monotonic() - started
        self.replicas = replicas
        if replicas != before or self.sent or self._received is not None:
            if before:
                self.quorum_changes += 1
            self._log_change(before, replicas, step, waited)

    def _log_change(self, before: int, after: int, step: int, waited: float) -> None:
        if self.group_rank != 0:
            return
        what = []
        if before and after < before:
            what.append(f"{before - after} group(s) left")
        if before and after > before:
            what.append(f"{after - before} group(s) joined")
        if self.sent:
            what.append("sent the current state to a joining group")
        if self._received is not None and self.manager.current_step() > step:
            what.append(f"rejoined: received the state of step {self.manager.current_step()} from a live group")
        elif self._received is not None:  # torchft's initial sync at step 0: every group starts from one's weights
            what.append("took the initial state of a live group")
        if not before and not self._received:
            what.append("joined")
        sys.stderr.write(
            f"[dltrain] replica group {self.group}: quorum of {after}/{self.groups} groups at step "
            f"{self.manager.current_step()} ({'; '.join(what) or 'reconfigured'}); waited {waited:.2f} s\n")

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients over the quorum's groups in place.

        A parameter without a gradient counts as zero, so that every group sends the same buffer. Errors are
        recorded by torchft; `commit` then says no.
        """
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.manager.allreduce(flat).wait()
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            if p.grad is None:
                p.grad = g
            p.grad.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def commit(self) -> bool:
        """Vote on this step (torchft's ``should_commit``).

        Returns:
            True when every rank of this group has its gradients averaged over a quorum of at least
            ``min_replicas`` groups.
        """
        return bool(self.manager.should_commit())

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)
