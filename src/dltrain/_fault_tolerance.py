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

__all__ = ["ReplicaGroups", "import_torchft"]


def import_torchft() -> Any:
    """torchft, or a ConfigurationError naming the extra that installs it."""
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
        group_rank, group_size: this process's rank in its replica group and the group's size.
        broadcast: ``value -> rank 0's value`` inside the group (the group's own process group).
        state_dict: what this rank sends a group that joins (called on torchft's quorum thread while the
            training thread waits for the quorum).
        load_state_dict: applies what a live group sent (called on the training thread, inside `start_step`).
    """

    def __init__(self, spec: FaultTolerant, group_rank: int, group_size: int, broadcast: Callable[[Any], Any],
                 state_dict: Callable[[], dict[str, Any]], load_state_dict: Callable[[dict[str, Any]], None]) -> None:
        torchft = import_torchft()
        from torchft.manager import Manager

        assert spec.replica_group is not None and spec.replica_groups is not None and spec.lighthouse
        self.spec = spec
        self.group = spec.replica_group
        self.groups = spec.replica_groups
        self.group_rank = group_rank
        self._state_dict = state_dict
        self._load_state_dict = load_state_dict
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
        self.healed = False  # this launch received its state from a live group
        self.joined_at_ns = 0  # wall clock (ns) just before this launch's first quorum (the ledger records it)
        self.sent = 0  # states sent to joining groups since the last quorum
        self._in_loop = False
        self._received: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the state a joining group receives
    def _send(self) -> dict[str, Any]:
        self.sent += 1
        return self._state_dict()

    def _apply(self, state: dict[str, Any]) -> None:
        self.healed = True
        self._received = state
        self._load_state_dict(state)

    # ------------------------------------------------------------------ one step
    def join(self, step: int) -> dict[str, Any] | None:
        """The first quorum of this launch, before training: a group that is behind the others (restarted)
        receives their state (returned; ``None`` when none came). At a fresh start (step 0 everywhere) it waits
        until every group has joined, so that no group trains steps the others miss."""
        self.joined_at_ns = time.time_ns()
        deadline = time.monotonic() + self.spec.quorum_timeout
        while True:
            self._quorum(step)
            if self.replicas >= self.groups or self.manager.current_step() > 0:
                break
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"replica group {self.group} (rank {self.group_rank}): only {self.replicas} of {self.groups} "
                    f"replica groups joined within {self.spec.quorum_timeout:.0f} s of the start (lighthouse "
                    f"{self.spec.lighthouse}): start one launch per group with REPLICA_GROUP_ID=0..{self.groups - 1}"
                    ", or lower NUM_REPLICA_GROUPS")
            time.sleep(0.2)
        received, self._received = self._received, None
        self._in_loop = True
        return received

    def start_step(self, step: int) -> None:
        """The quorum of the coming step (a group that fell behind receives the current state here)."""
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
        if replicas != before or self.sent or (self.healed and self._received is not None):
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
        if self._received is not None:
            what.append(f"rejoined: received the state of step {self.manager.current_step()} from a live group")
        if not before and not self._received:
            what.append("joined")
        sys.stderr.write(
            f"[dltrain] replica group {self.group}: quorum of {after}/{self.groups} groups at step "
            f"{self.manager.current_step()} ({'; '.join(what) or 'reconfigured'}); waited {waited:.2f} s\n")

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients over the quorum's groups in place (a parameter without a gradient counts as
        zero, so that every group sends the same buffer). Errors are recorded by torchft; `commit` then says no."""
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
        """torchft's vote on this step: True when every rank of this group has its gradients averaged over a
        quorum of at least ``min_replicas`` groups."""
        return bool(self.manager.should_commit())

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)
