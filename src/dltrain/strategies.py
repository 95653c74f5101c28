"""Strategy specifications for ``Trainer(strategy=...)``.

They stand next to the strings (``"ddp"``, ``"fsdp2"``) and Lightning Fabric ``Strategy`` instances.

A specification says *what* parallelism a run wants and is turned into a Fabric strategy once the Trainer
knows the number of processes. It imports nothing heavy: ``import dltrain`` stays quick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from lightning.fabric import Fabric
    from lightning.fabric.plugins import Precision
    from lightning.fabric.strategies import Strategy

__all__ = ["FSDP2", "FaultTolerant", "StrategyView"]


@dataclass(frozen=True)
class FSDP2:
    """FSDP2 over the data-parallel ranks, optionally with tensor parallelism on a 2-D mesh (data x tensor).

    ``Trainer(strategy="fsdp2")`` is ``Trainer(strategy=FSDP2())``. With ``tensor_parallel_size=T`` the world's
    ``W`` processes form a ``(W // T) x T`` mesh with dimensions ``"data_parallel"`` and ``"tensor_parallel"``
    (consecutive global ranks are tensor-parallel peers); the task applies its tensor-parallel plan in
    ``configure_model`` with ``parallelize_module(..., self.device_mesh["tensor_parallel"], plan)`` and dltrain
    then shards it over ``"data_parallel"`` (unless the task called ``fully_shard`` itself). Data is split, and
    metrics are reduced, over the data-parallel ranks: tensor-parallel peers read the same samples.

    Args:
        tensor_parallel_size: ranks of each tensor-parallel group; must divide the number of processes.
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory (FSDP2's
            ``CPUOffloadPolicy``): each unit's parameters are copied to the device for its forward and backward,
            and the optimizer steps on the CPU. Trades speed for device memory; the results are the same.

    Example:
        >>> import dltrain
        >>> # not run: a 2 x 2 mesh needs 4 processes (torchrun --nproc_per_node=4), one device each
        >>> trainer = dltrain.Trainer(strategy=dltrain.FSDP2(tensor_parallel_size=2), devices=4)  # doctest: +SKIP
    """

    tensor_parallel_size: int = 1
    cpu_offload: bool = False

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ConfigurationError(f"FSDP2(tensor_parallel_size={tp!r}): use a whole number, 1 or more")
        if not isinstance(self.cpu_offload, bool):
            raise ConfigurationError(f"FSDP2(cpu_offload={self.cpu_offload!r}): use True or False")

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel ranks of a run of ``world_size`` processes.

        Raises:
            ConfigurationError: ``tensor_parallel_size`` does not divide ``world_size``.
        """
        return data_parallel_size(world_size, self.tensor_parallel_size, f"FSDP2(tensor_parallel_size="
                                                                         f"{self.tensor_parallel_size})")


def data_parallel_size(world_size: int, tensor_parallel_size: int, asked: str) -> int:
    """``world_size // tensor_parallel_size``; a ConfigurationError naming both numbers when that leaves a rest."""
    if world_size % tensor_parallel_size:
        fits = [t for t in range(1, world_size + 1) if world_size % t == 0]
        more = -(-world_size // tensor_parallel_size) * tensor_parallel_size
        raise ConfigurationError(
            f"{asked}: the tensor-parallel size {tensor_parallel_size} does not divide the world size {world_size} "
            f"(processes = devices x nodes); the ranks form a data-parallel x tensor-parallel grid, so the world "
            f"size must be a multiple of it. Use tensor_parallel_size in {fits}, or launch {more} processes"
        )
    return world_size // tensor_parallel_size


#: Environment variables a fault-tolerant launch reads (the names torchft's own examples use).
REPLICA_GROUP_ENV, REPLICA_GROUPS_ENV, LIGHTHOUSE_ENV = "REPLICA_GROUP_ID", "NUM_REPLICA_GROUPS", "TORCHFT_LIGHTHOUSE"


@dataclass(frozen=True)
class FaultTolerant:
    """Several replica groups that train one model and survive each other's failures (torchft).

    Each replica group is one launch (``torchrun --max-restarts=...``) of ``N`` processes that train with DDP among
    themselves; the groups average their gradients through torchft's managed gloo process group, and a step counts
    only when the quorum of live groups commits it. When a process dies, its group's torchrun restarts the group,
    the other groups train on (a step that the failure interrupted is not committed), and the restarted group
    receives the current model, optimizer and loop state from a live group over the network (not from disk).
    See docs/guides/fault-tolerance.md, "Surviving failures without a restart".

    Every field left ``None`` is read from the environment: ``replica_group`` from ``REPLICA_GROUP_ID``,
    ``replica_groups`` from ``NUM_REPLICA_GROUPS``, ``lighthouse`` from ``TORCHFT_LIGHTHOUSE`` (as torchft does).

    Args:
        replica_groups: how many replica groups the job has; the training data is split over all their ranks.
        replica_group: this launch's group, ``0 .. replica_groups - 1``. Group 0 writes checkpoints and logs.
        min_replicas: the fewest live groups that may commit a step (torchft's ``min_replica_size``); the others
            wait below it. Keep the lighthouse's ``--min-replicas`` the same.
        lighthouse: the lighthouse's address (``http://host:port``, printed by ``dltrain lighthouse``).
        timeout: seconds a gradient all-reduce, a commit vote or a state transfer may take before the step is
            abandoned (not committed).
        quorum_timeout: seconds a step may wait for a quorum (at the start: for every group to arrive) before
            the run fails with an error naming the lighthouse.
        strategy: the strategy inside a group: ``"ddp"`` (FSDP2 inside a group is refused: not built yet).

    Example:
        >>> import dltrain
        >>> # not run: a replica group needs a running lighthouse (TORCHFT_LIGHTHOUSE) and torchrun's variables
        >>> trainer = dltrain.Trainer(strategy=dltrain.FaultTolerant(min_replicas=1))  # doctest: +SKIP
    """

    replica_groups: int | None = None
    replica_group: int | None = None
    min_replicas: int = 1
    lighthouse: str | None = None
    timeout: float = 60.0
    quorum_timeout: float = 600.0
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        if self.strategy != "ddp":
            raise ConfigurationError(
                f"FaultTolerant(strategy={self.strategy!r}): only 'ddp' inside a replica group is supported; FSDP2 "
                "inside a group (HSDP over the groups) is not built yet: its gradient reduction across groups would "
                "go through FSDP2's all-reduce hook on torchft's managed process group, and a joining group would "
                "need the sharded state of the peer rank with the same shard")
        for name in ("replica_groups", "replica_group", "min_replicas"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigurationError(f"FaultTolerant({name}={value!r}): use a whole number")
        for name in ("timeout", "quorum_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"FaultTolerant({name}={value!r}): use a number of seconds above 0")

    def resolved(self, environ: dict[str, str] | None = None) -> FaultTolerant:
        """This specification with every field known: ``None`` fields read from the environment, then checked.

        Raises:
            ConfigurationError: a field is neither given nor in the environment, or out of range.
        """
        env = dict(os.environ if environ is None else environ)

        def read(value: int | str | None, var: str, what: str) -> str:
            if value is not None:
                return str(value)
            if not env.get(var):
                raise ConfigurationError(
                    f"FaultTolerant: {what} is not known: pass it or set {var} in every launch of the job "
                    f"(docs/guides/fault-tolerance.md)")
            return env[var]

        def whole(text: str, var: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise ConfigurationError(f"FaultTolerant: {var}={text!r} is not a whole number") from None

        groups = whole(read(self.replica_groups, REPLICA_GROUPS_ENV, "the number of replica groups"),
                       REPLICA_GROUPS_ENV)
        group = whole(read(self.replica_group, REPLICA_GROUP_ENV, "this launch's replica group"), REPLICA_GROUP_ENV)
        lighthouse = read(self.lighthouse, LIGHTHOUSE_ENV, "the lighthouse's address (dltrain lighthouse prints it)")
        if groups < 1 or not 0 <= group < groups:
            raise ConfigurationError(
                f"FaultTolerant: replica group {group} of {groups}: the groups are numbered 0 to {groups - 1} "
                f"({REPLICA_GROUP_ENV}, {REPLICA_GROUPS_ENV})")
        if not 1 <= self.min_replicas <= groups:
            raise ConfigurationError(
                f"FaultTolerant(min_replicas={self.min_replicas}): use 1 to {groups} (the job has {groups} replica "
                "groups); a majority of them keeps a split network from training two models")
        return FaultTolerant(replica_groups=groups, replica_group=group, min_replicas=self.min_replicas,
                             lighthouse=lighthouse, timeout=self.timeout, quorum_timeout=self.quorum_timeout,
                             strategy=self.strategy)


class _RunsOnFabric(Protocol):
    """What :class:`StrategyView` reads of the Trainer (all public)."""

    @property
    def fabric(self) -> Fabric: ...
    @property
    def lightning_module(self) -> Any: ...
    @property
    def model(self) -> Any: ...
    @property
    def optimizers(self) -> list[Any]: ...


class StrategyView:
    """``trainer.strategy``: the Fabric strategy that runs the model, answering to Lightning's strategy names too.

    Lightning code reaches the strategy from a task (``self.trainer.strategy.reduce(x, reduce_op="sum")``,
    ``.barrier()``, ``.broadcast(obj)``, ``.root_device``). dltrain runs on Lightning Fabric's strategies, which
    have most of those names but call the reduction ``all_reduce`` and the precision ``precision``; this view adds
    Lightning's names and hands everything else to the Fabric strategy (``fabric_strategy``), so both spellings work.

    Added here: ``reduce``, ``lightning_module``, ``model``, ``optimizers``, ``precision_plugin``,
    ``remove_checkpoint``. Lightning's loop-internal strategy methods (``training_step``, ``setup``, ...) are not
    offered: dltrain's loops do that work.

    Example:
        >>> import torch, dltrain
        >>> trainer = dltrain.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        >>> trainer.strategy.reduce(torch.tensor(3.0), reduce_op="sum")  # one process: the value itself
        tensor(3.)
        >>> trainer.strategy.root_device
        device(type='cpu')
    """

    __slots__ = ("_trainer",)

    def __init__(self, trainer: _RunsOnFabric) -> None:
        self._trainer = trainer

    @property
    def fabric_strategy(self) -> Strategy:
        """Lightning Fabric's strategy object (``SingleDeviceStrategy``, ``DDPStrategy``, ``ModelParallelStrategy``...)."""
        return self._trainer.fabric.strategy

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: str | None = "mean") -> Any:
        """Reduce a tensor over the ranks (``"mean"``, ``"sum"``, ...); anything else is returned as it is.

        Every rank must call it (a collective). One process: the tensor itself.
        """
        return self.fabric_strategy.all_reduce(tensor, group=group, reduce_op=reduce_op)

    @property
    def lightning_module(self) -> Any:
        """The task being run."""
        return self._trainer.lightning_module

    @property
    def model(self) -> Any:
        """The task as the strategy placed it (its wrapper under DDP)."""
        return self._trainer.model

    @property
    def optimizers(self) -> list[Any]:
        """The task's optimizers."""
        return self._trainer.optimizers

    @property
    def precision_plugin(self) -> Precision:
        """The precision plugin (Fabric's ``strategy.precision``)."""
        return self.fabric_strategy.precision

    def remove_checkpoint(self, filepath: str) -> None:
        """Delete a checkpoint through the strategy's checkpoint IO; only global rank zero deletes."""
        if self.fabric_strategy.is_global_zero:
            self.fabric_strategy.checkpoint_io.remove_checkpoint(filepath)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names this class lacks: Fabric's strategy has them (barrier, broadcast, all_gather,
        # reduce_boolean_decision, root_device, world_size, checkpoint_io, precision, ...) or the error is its own.
        if name == "_trainer":  # not set yet (copy, unpickling): no recursion through fabric_strategy
            raise AttributeError(name)
        return getattr(self.fabric_strategy, name)

    def __repr__(self) -> str:
        return f"StrategyView({self.fabric_strategy!r})"
