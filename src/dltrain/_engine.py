"""`Engine`: Fabric and the strategy mechanics a step needs, decided once per placement.

The loops say *what* happens in a step (``dltrain.loop``); the engine says *how* on this strategy and precision:
where the task is placed, how a step method is called (directly, through the strategy's wrapper, or inside the
precision context), the one backward path, clipping, which object's ``step()`` steps the optimizer, the
zero-gradient loss of a rank with nothing to contribute, and the collectives. On one device at full precision
(the "plain" path) a step, ``backward`` and ``optimizer.step`` are called directly, as a hand-written loop does.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins.precision import Precision
from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch import Tensor

from dltrain import _sharded
from dltrain._compat import strategy_wraps_module
from dltrain._hooks import overrides
from dltrain._optim import ManualOptimizer, SchedulerConfig, parse_optimizers
from dltrain._step_output import raise_if_unused_parameters
from dltrain.errors import ConfigurationError, DistributedError
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain._fault_tolerance import ReplicaGroups
    from dltrain._hooks import HookDispatcher
    from dltrain._run_state import LoopState
    from dltrain.strategies import FaultTolerant

__all__ = ["ZERO_LOSS_METHOD", "Engine"]

# The task method that makes a zero-gradient loss (`Task._zero_grad_loss`); called through the strategy's wrapper
# (`mark_forward_method`) when no forward ran for the step, so DDP's reducer sees one forward and one backward.
ZERO_LOSS_METHOD = "_zero_grad_loss"


class Engine:
    """Fabric, the placed task and its optimizers, and how steps, backward, clipping and collectives run."""

    def __init__(self, fabric: Fabric, fault_tolerant: FaultTolerant | None = None) -> None:
        self.fabric = fabric
        self.layout = _sharded.layout_of(fabric.strategy, fabric.global_rank, fabric.world_size)
        # strategy=dltrain.FaultTolerant: this process's replica group (`layout` is inside the group; the training
        # data is split over every group's ranks, `train_layout`); `replicas` runs torchft once fit starts.
        self.fault_tolerant = fault_tolerant
        self.replicas: ReplicaGroups | None = None
        self.train_layout = self.layout
        if fault_tolerant is not None:
            assert fault_tolerant.replica_group is not None and fault_tolerant.replica_groups is not None
            size = self.layout.size
            self.train_layout = self.layout._replace(rank=fault_tolerant.replica_group * size + self.layout.rank,
                                                     size=fault_tolerant.replica_groups * size)
        # Set by `place`: what Fabric returned and how steps run on this strategy.
        self.task: Task | None = None  # the placed task
        self.module: Any = None  # Fabric's wrapper of the task (a _FabricModule)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.fabric_optimizers: list[Any] = []  # Fabric's wrappers of `optimizers`, in the same order
        self.manual_optimizers: list[ManualOptimizer] = []  # what Task.optimizers() hands out
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.plain = False  # one device, full precision: backward and optimizer step called directly
        self.task_backward: Callable[..., Any] | None = None  # the task's own backward, when it overrides it
        self.wraps_module = False  # DDP/FSDP: training steps go through the wrapper's forward
        self.shards_module = False  # FSDP: evaluation steps too
        self.sharded_in_place = False  # FSDP2: fully_shard's hooks on the task itself, steps called directly
        self.syncs_gradients = False  # a backward on one rank waits for the others' (DDP, FSDP2; several ranks)
        self.check_loss_on_host = True  # read the loss every step (CPU, or skipping non-finite steps)

    # ------------------------------------------------------------------ where this process runs
    @property
    def strategy(self) -> Strategy:
        return self.fabric.strategy

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    @property
    def global_rank(self) -> int:
        return self.fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self.fabric.local_rank

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def is_global_zero(self) -> bool:
        """Rank 0 of the job: with replica groups, rank 0 of group 0 (the one writer of checkpoints and logs)."""
        return self.fabric.is_global_zero and (self.fault_tolerant is None or self.fault_tolerant.replica_group == 0)

    @property
    def is_fsdp2(self) -> bool:
        return _sharded.is_fsdp2(self.strategy)

    # ------------------------------------------------------------------ placing the task
    def place(self, task: Task, *, with_optimizer: bool, sync_batchnorm: bool, on_nonfinite_loss: str,
              hooks: HookDispatcher, progress: LoopState) -> None:
        """Place the task (and its optimizers) with Fabric; once per task, again when optimizers are first needed.

        Decides how steps, backward and optimizer steps run from here on.
        """
        if self.task is task and (self.fabric_optimizers or not with_optimizer):
            return
        if sync_batchnorm and self.world_size > 1:
            task = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)  # type: ignore[assignment]
        # FSDP2 replaces the parameters with sharded ones: the task is placed (once) before configure_optimizers.
        sharded = self.is_fsdp2
        if not sharded:
            _sharded.check_no_dtensors(task, self.strategy)
        if sharded and self.task is not task:
            self.module = self.fabric.setup_module(task)
            _sharded.register_step_methods(task)  # also when a ModelParallelStrategy's own function sharded it
        if with_optimizer:
            optimizers, schedulers = parse_optimizers(task.configure_optimizers())
            if len(optimizers) > 1 and task.automatic_optimization:
                raise ConfigurationError(
                    f"configure_optimizers() returned {len(optimizers)} optimizers: several optimizers need manual "
                    "optimization (set self.automatic_optimization = False in __init__ and step them in "
                    "training_step, as in Lightning), or put several parameter groups in one optimizer"
                )
            if sharded:
                placed_optimizers = self.fabric.setup_optimizers(*optimizers) if optimizers else ()
                self.fabric_optimizers = list(placed_optimizers if isinstance(placed_optimizers, tuple)
                                              else (placed_optimizers,))
            else:
                placed = self.fabric.setup(task, *optimizers)
                self.module = placed[0] if optimizers else placed
                self.fabric_optimizers = list(placed[1:]) if optimizers else []
            self.optimizers = optimizers
            self.lr_scheduler_configs = schedulers
            self.manual_optimizers = [ManualOptimizer.wrap(hooks, progress, o, f)
                                      for o, f in zip(optimizers, self.fabric_optimizers)]
        elif not sharded:
            self.module = self.fabric.setup_module(task)
        self.task = task
        full_precision = type(self.strategy.precision) is Precision
        # A task that overrides Task.backward gets its own backward called (`backward`), not loss.backward().
        self.task_backward = task.backward if overrides(task, Task, "backward") else None
        self.plain = (full_precision and isinstance(self.strategy, SingleDeviceStrategy)
                      and self.task_backward is None)
        self.wraps_module = strategy_wraps_module(self.module)
        self.shards_module = self.wraps_module and not isinstance(self.strategy, DDPStrategy)
        self.sharded_in_place = sharded
        self.syncs_gradients = (self.wraps_module or self.sharded_in_place) and self.world_size > 1
        if self.wraps_module:
            self.module.mark_forward_method(ZERO_LOSS_METHOD)
        self.check_loss_on_host = self.device.type == "cpu" or on_nonfinite_loss == "skip"

    def forget_optimizers(self) -> None:
        """Drop the placed optimizers: the next `place` with optimizers calls ``configure_optimizers`` again.

        For `dltrain.tuner`: a fit after a search gets new optimizers, with the value found, and no search
        state.
        """
        self.optimizers = []
        self.lr_scheduler_configs = []
        self.fabric_optimizers = []
        self.manual_optimizers = []

    # ------------------------------------------------------------------ steps
    def step_method(self, task: Task, name: str, through_wrapper: bool,
                    dataloader_idx: int | None = None) -> Callable[[Any, int], Any]:
        """``(batch, batch_idx) -> output`` for the task's step method ``name``.

        The method itself on the plain path; through the strategy's wrapper (DDP's gradient sync, FSDP's
        all-gather) or inside the precision context otherwise. ``dataloader_idx`` is passed on with several
        loaders (as in Lightning).
        """
        # Fabric sends a call through the wrapper's forward, under the precision context.
        method = getattr(self.module, name) if through_wrapper else getattr(task, name)
        extra = () if dataloader_idx is None else (dataloader_idx,)
        # Lightning allows training_step(self, batch). Read from the class: FSDP2's forward-method wrapper on the
        # instance (strategy="fsdp2") does not show the method's own signature.
        defined = getattr(type(task), name, None)
        takes_index = _accepts_batch_idx(defined.__get__(task) if defined is not None else getattr(task, name))
        precision = self.strategy.precision
        plain = through_wrapper or type(precision) is Precision  # the wrapper applies the precision itself
        if plain and takes_index and not extra:
            return method  # type: ignore[no-any-return]  # call the task as a hand-written loop would

        def step(batch: Any, batch_idx: int) -> Any:
            args = (batch, batch_idx, *extra) if takes_index else (batch, *extra)
            if plain:
                return method(*args)
            with precision.forward_context():
                return method(precision.convert_input(args[0]), *args[1:])

        return step

    def no_backward_sync(self) -> contextlib.AbstractContextManager[Any]:
        """Inside an accumulation window: no gradient all-reduce in this backward (DDP)."""
        if not self.wraps_module:
            return contextlib.nullcontext()
        return self.fabric.no_backward_sync(self.module, enabled=True)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The one backward: ``loss.backward()`` on the plain path, else Fabric's.

        Fabric's applies precision scaling and strategy hooks; DDP's unused-parameter error is said plainly.
        """
        if self.plain:
            loss.backward(*args, **kwargs)
            return
        if self.task_backward is not None:
            # The task's own backward, with the loss scaled as the precision needs (16-mixed), as Lightning calls it.
            scaler = getattr(self.strategy.precision, "scaler", None)
            self.task_backward(scaler.scale(loss) if scaler is not None else loss, *args, **kwargs)
            return
        try:
            self.fabric.backward(loss, *args, model=self.module, **kwargs)
        except RuntimeError as err:
            raise_if_unused_parameters(err)
            raise

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """`backward` for manual optimization, averaging the gradients over the ranks under DDP.

        There the task's steps bypass DDP's forward (its reducer allows one backward per forward).
        """
        self.backward(loss, *args, **kwargs)
        if self.wraps_module and not self.shards_module and self.world_size > 1:
            self._average_gradients()

    def _average_gradients(self) -> None:
        """One all-reduce of every gradient.

        Every rank must produce gradients for the same parameters (true of the same code on every rank; a
        mismatch fails in the all-reduce rather than training on unsynced gradients).
        """
        assert self.task is not None
        grads = [p.grad for p in self.task.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def stepping_optimizer(self, index: int = 0) -> Any:
        """The object whose ``step()`` steps optimizer ``index``.

        The optimizer itself on the plain path, else Fabric's wrapper (precision: the gradient scaler;
        strategy: its optimizer step).
        """
        return self.optimizers[index] if self.plain else self.fabric_optimizers[index]

    def clip(self, optimizer: torch.optim.Optimizer, value: float, algorithm: str) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm or value (unscaled first under 16-mixed)."""
        fabric_optimizer = next((w for o, w in zip(self.optimizers, self.fabric_optimizers) if o is optimizer),
                                optimizer)
        if algorithm == "norm":
            self.fabric.clip_gradients(self.module, fabric_optimizer, max_norm=value)
        elif algorithm == "value":
            self.fabric.clip_gradients(self.module, fabric_optimizer, clip_val=value)
        else:
            raise ConfigurationError(f"gradient_clip_algorithm={algorithm!r}: use 'norm' or 'value'")

    def zero_loss(self, batch: Any, batch_idx: int, forward_done: bool) -> Tensor:
        """A loss whose gradient is zero for every parameter, for a rank with nothing to contribute to a step."""
        assert self.task is not None
        if self.sharded_in_place:
            # FSDP2 reduces each module's gradients as its backward reaches it, so a rank must run the same modules
            # forward and backward as the others: a loss made of the parameters alone would not.
            raise DistributedError(
                f"rank {self.global_rank} has no loss for batch {batch_idx} ("
                f"{'the batch was None' if batch is None else 'training_step returned None, or on_nonfinite_loss skipped it'}"
                "): with strategy=\"fsdp2\" every rank must compute a loss for every batch. Return loss * 0 from "
                "training_step to contribute nothing, or use strategy=\"ddp\""
            )
        # DDP's forward already ran for this step (it now expects one backward): call the task; else through the
        # wrapper's forward.
        owner = self.task if forward_done else self.module
        loss: Tensor = getattr(owner, ZERO_LOSS_METHOD)(batch, batch_idx)
        return loss

    def evaluation_grad_mode(self, inference_mode: bool) -> contextlib.AbstractContextManager[Any]:
        """Evaluation without gradients.

        FSDP2 keeps its all-gather buffers between steps: made under inference mode, training could not write
        them again ("Inplace update to inference tensor"), so sharded models evaluate under no_grad (as
        Lightning does).
        """
        return torch.inference_mode() if inference_mode and not self.sharded_in_place else torch.no_grad()

    # ------------------------------------------------------------------ replica groups (FaultTolerant)
    def start_replicas(self, state_dict: Callable[[], dict[str, Any]],
                       load_in_loop: Callable[[dict[str, Any]], None], step: int) -> dict[str, Any] | None:
        """Join the job's replica groups (strategy=dltrain.FaultTolerant): torchft's manager, the first quorum.

        ``state_dict`` makes what this group sends a joining one, ``load_in_loop`` applies what it receives when it
        falls behind while training.

        Returns:
            The state a live group sent when this group was behind (a restart), to restore the fit from.
        """
        from dltrain._fault_tolerance import ReplicaGroups

        assert self.fault_tolerant is not None and self.task is not None
        if self.replicas is None:
            self.replicas = ReplicaGroups(
                self.fault_tolerant, self.global_rank, self.world_size,
                broadcast=lambda value: self.fabric.broadcast(value, src=0),
                state_dict=state_dict, load_in_loop=load_in_loop)
        return self.replicas.join(step)

    def stop_replicas(self) -> None:
        """Leave the replica groups (torchft's manager shut down)."""
        if self.replicas is not None:
            self.replicas.shutdown()
            self.replicas = None

    def start_replica_step(self, step: int, accumulate_grad_batches: int) -> None:
        """The quorum of the coming optimizer step (replica groups only)."""
        if self.replicas is not None:
            from dltrain._fault_tolerance import check_accumulation

            check_accumulation(accumulate_grad_batches)  # a callback may have changed it at this epoch's start
            self.replicas.start_step(step)

    def replica_gradients_and_vote(self) -> bool:
        """The gradients averaged over the replica groups, then torchft's vote.

        Returns:
            True when the step may be taken (always, without replica groups).
        """
        if self.replicas is None:
            return True
        assert self.task is not None
        self.replicas.average_gradients(self.task.parameters())
        return self.replicas.commit()

    # ------------------------------------------------------------------ collectives
    def any_rank(self, flag: bool) -> bool:
        """``flag`` ORed over the ranks (one all-reduce; none on one process)."""
        if self.world_size < 2:
            return flag
        total = self.fabric.all_reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        assert isinstance(total, Tensor)
        return bool(total > 0)

    def all_gather_ints(self, value: int) -> list[int]:
        """``value`` of every rank, in rank order (`dltrain.distributed.gather_ints`)."""
        from dltrain.distributed import gather_ints

        return gather_ints(value, self.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects)."""
        if self.world_size < 2:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def check_equal_batch_counts(self, remaining: int, per_epoch: float) -> None:
        """Check that every rank runs as many batches as the others, or DDP hangs.

        Checked once per epoch: one all-gather; nothing when the count is unknown or there is one process.
        """
        if self.world_size < 2 or not math.isfinite(per_epoch):
            return
        lengths = self.all_gather_ints(remaining)
        if len(set(lengths)) > 1:
            raise DistributedError(
                f"the ranks have different numbers of training batches this epoch ({dict(enumerate(lengths))}): "
                "DDP would hang at the end of the shortest. Use a plain DataLoader (dltrain distributes it evenly), "
                "dltrain.data.StreamingDataset, or make your sampler give every rank the same count."
            )

    def barrier(self) -> None:
        self.fabric.barrier()

    # ------------------------------------------------------------------ checkpoints (unsharded)
    def module_state_dict(self) -> dict[str, Any]:
        return self.strategy.get_module_state_dict(self.module)

    def load_module_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.strategy.load_module_state_dict(self.module, state_dict)

    def optimizer_states(self) -> list[dict[str, Any]]:
        return [self.strategy.get_optimizer_state(o) for o in self.fabric_optimizers]


def _accepts_batch_idx(method: Callable[..., Any]) -> bool:
    """Whether a step method takes ``batch_idx`` (Lightning allows ``training_step(self, batch)``)."""
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
