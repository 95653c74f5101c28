"""Weight averaging: `WeightAveraging` (SWA by default), `EMAWeightAveraging`, `StochasticWeightAveraging`.

Lightning's callbacks of these names, with the same arguments and behaviour (validation runs on the averaged
weights, training ends with them in the task, a checkpoint's weights for inference are the averaged ones), and two
things Lightning's do not do:

- they work under ``strategy="fsdp2"``: the averaged copy is kept shard by shard (each rank averages its own
  shards of the parameters, so it costs each rank 1/N of the model), and is gathered whole only to be written;
- a checkpoint holds everything the average needs (its weights, how many models it averaged, the last step and
  epoch it was updated at), so a run resumed after ``kill -9`` ends bitwise equal to the uninterrupted one.

In a checkpoint, ``state_dict`` (or the shards) holds the weights being trained (what a resume continues from) and
``averaged_state_dict`` the averaged ones; ``Task.load_from_checkpoint`` and ``trainer.validate/test/predict(
ckpt_path=...)`` load the averaged ones, as Lightning's (whose ``state_dict`` holds them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_avg_fn, get_swa_avg_fn, get_swa_multi_avg_fn
from typing_extensions import override

from dltrain._compat import is_batch_norm
from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["EMAWeightAveraging", "StochasticWeightAveraging", "WeightAveraging"]


def _local(t: Tensor) -> Tensor:
    """The tensor this rank holds: a DTensor's local shard (FSDP2), else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _named_state(task: nn.Module, use_buffers: bool) -> Iterator[tuple[str, Tensor, bool]]:
    """(name, tensor, averaged) for the parameters, then the buffers, in ``AveragedModel``'s order."""
    for name, p in task.named_parameters():
        yield name, p, True
    for name, b in task.named_buffers():
        yield name, b, use_buffers


class WeightAveraging(Callback):
    """Keep an average of the task's weights, updated after every optimizer step (override ``should_update``).

    The averaging is ``torch.optim.swa_utils.AveragedModel``'s: an equal-weight average by default (SWA), or
    ``avg_fn``/``multi_avg_fn`` (``get_ema_multi_avg_fn(0.999)``...). Validation during ``fit`` runs on the
    averaged weights; at the end of training they are copied into the task.

    Args:
        device: where the averaged copy lives (default: with the model; ``"cpu"`` saves accelerator memory).
        use_buffers: average the buffers too (BatchNorm statistics); ``False`` copies them.
        **kwargs: ``avg_fn`` or ``multi_avg_fn`` of ``AveragedModel``.

    Example:
        >>> averaging = WeightAveraging()  # the equal-weight average of every step's weights
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[averaging], logger=False, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)  # the task ends with the averaged weights
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        unknown = set(kwargs) - {"avg_fn", "multi_avg_fn"}
        if unknown:
            raise ConfigurationError(f"{type(self).__name__}: unknown arguments {sorted(unknown)}; "
                                     "AveragedModel takes avg_fn or multi_avg_fn")
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._avg_fn: Callable[..., Tensor] | None = kwargs.get("avg_fn")
        self._multi_avg_fn: Callable[..., None] | None = kwargs.get("multi_avg_fn")
        self._average: list[Tensor] | None = None  # this rank's part of each averaged tensor, in _named_state order
        self._n_averaged = 0
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update the average now; default: after every optimizer step.

        Called after optimizer step ``step_idx`` (zero-based) or at the end of epoch ``epoch_idx`` (one of them
        is given).
        """
        return step_idx is not None

    # ------------------------------------------------------------------ the averaged copy
    def _ensure_average(self, task: Task) -> list[Tensor]:
        if self._average is None:
            device = self._device
            self._average = [_local(t).detach().clone().to(device if device is not None else _local(t).device)
                             for _, t, _ in _named_state(task, self._use_buffers)]
        return self._average

    @torch.no_grad()
    def _update(self, task: Task) -> None:
        average = self._ensure_average(task)
        pairs = [(a, _local(t).detach(), averaged)
                 for a, (_, t, averaged) in zip(average, _named_state(task, self._use_buffers))]
        mine = [(a, t.to(a.device)) for a, t, averaged in pairs if averaged]
        if self._n_averaged == 0:
            for a, t in mine:
                a.copy_(t)
        elif self._avg_fn is not None and self._multi_avg_fn is None:
            for a, t in mine:
                a.copy_(self._avg_fn(a, t, torch.tensor(self._n_averaged, device=a.device)))
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
            for a, t in mine:
                ours, theirs = groups.setdefault((a.device, a.dtype), ([], []))
                ours.append(a)
                theirs.append(t)
            for (device, _), (ours, theirs) in groups.items():
                n = torch.tensor(self._n_averaged, device=device)
                if self._multi_avg_fn is not None:
                    self._multi_avg_fn(ours, theirs, n)
                elif device.type == "cuda":  # where AveragedModel uses the foreach kernels
                    get_swa_multi_avg_fn()(ours, theirs, n)
                else:
                    swa = get_swa_avg_fn()
                    for a, t in zip(ours, theirs):
                        a.copy_(swa(a, t, n))
        for a, t, averaged in pairs:
            if not averaged:  # buffers with use_buffers=False: copied, as AveragedModel does
                a.copy_(t)
        self._n_averaged += 1

    @torch.no_grad()
    def _swap(self, task: Task) -> None:
        if self._average is None:
            return
        for a, (_, t, _) in zip(self._average, _named_state(task, True)):
            here = _local(t.detach())
            held = a.clone()
            a.copy_(here)
            here.copy_(held)

    @torch.no_grad()
    def _copy_average_to(self, task: Task) -> None:
        if self._average is None:
            return
        for a, (_, t, _) in zip(self._average, _named_state(task, True)):
            _local(t.detach()).copy_(a)

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        self._ensure_average(task)  # after placement: the copy has the layout (shards) of the trained weights

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step > self._latest_update_step and self.should_update(step_idx=step - 1):
            self._update(task)
            self._latest_update_step = step

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            self._update(task)
            self._latest_update_epoch = epoch

    @override
    def on_train_end(self, trainer: TrainerView, task: Task) -> None:
        self._copy_average_to(task)

    @override
    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        if trainer.stage == "fit":
            self._swap(task)

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if trainer.stage == "fit":
            self._swap(task)

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "latest_update_epoch": self._latest_update_epoch,
                "n_averaged": self._n_averaged}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)
        self._n_averaged = state_dict.get("n_averaged", 0)

    @override
    def on_save_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        if self._average is None:
            return
        # Every rank takes part (a sharded tensor is gathered whole); rank zero's copy is the one written.
        names = set(checkpoint["state_dict"]) if "state_dict" in checkpoint else None
        full: dict[str, Tensor] = {}
        for a, (name, t, _) in zip(self._average, _named_state(task, True)):
            if names is not None and name not in names:
                continue  # a non-persistent buffer: not part of the model's state
            full[name] = _gather_whole(a, t).cpu()
        checkpoint["averaged_state_dict"] = full

    @torch.no_grad()
    @override
    def on_load_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        average = self._ensure_average(task)  # from the weights just restored into the task
        saved = checkpoint.get("averaged_state_dict")
        if saved is None:
            warnings.warn(f"{type(self).__name__}: the checkpoint was not written with weight averaging; the "
                          "average starts from its weights", UserWarning, stacklevel=2)
            return
        for a, (name, t, _) in zip(average, _named_state(task, True)):
            if name in saved:
                a.copy_(_shard_of(saved[name], t).to(a.device))


def _gather_whole(local: Tensor, like: Tensor) -> Tensor:
    """The whole tensor whose local part (this rank's shard of ``like``, a DTensor under FSDP2) is ``local``."""
    from torch.distributed.tensor import DTensor

    if not isinstance(like, DTensor):
        return local.detach().clone()
    whole = DTensor.from_local(local.to(like.device), like.device_mesh, like.placements, shape=like.shape,
                               stride=like.stride())
    return whole.full_tensor()


def _shard_of(whole: Tensor, like: Tensor) -> Tensor:
    """This rank's part of ``whole`` in the layout of ``like`` (a DTensor's local shard, else ``whole``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements).to_local()


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights: ``average = decay * average + (1 - decay) * weights``.

    Args:
        device: as `WeightAveraging`.
        use_buffers: as `WeightAveraging`.
        decay: the weight of the average at each update.
        update_every_n_steps: update after every n-th optimizer step (0: never after steps).
        update_starting_at_step: first optimizer step (zero-based) to update after.
        update_starting_at_epoch: from this epoch on, also update at epoch ends.

    Example:
        >>> ema = EMAWeightAveraging(decay=0.99, update_starting_at_step=2)
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[ema], logger=False, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)  # validation and the end of fit use the average
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ConfigurationError(f"EMAWeightAveraging(decay={decay}): use a value in [0, 1]")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=get_ema_avg_fn(decay=decay), **kwargs)
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        if epoch_idx is not None:
            return self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
        return False


class StochasticWeightAveraging(WeightAveraging):
    """Stochastic Weight Averaging (Izmailov et al., 2018) as Lightning's callback of this name runs it.

    From epoch ``swa_epoch_start`` on, the learning rate follows ``torch.optim.swa_utils.SWALR`` (annealed to
    ``swa_lrs`` over ``annealing_epochs``, replacing the task's scheduler), and the weights are averaged at the
    start of every epoch up to the last (so the average holds the weights after each epoch from
    ``swa_epoch_start - 1`` on, as Lightning's). At the end of training the task gets the averaged weights; with
    BatchNorm layers their statistics are then recomputed with one pass over the training data in train mode,
    without gradients (what Lightning's extra epoch does, without logging an epoch).

    Unlike `WeightAveraging`, validation during training uses the weights being trained, as in Lightning.

    Args:
        swa_lrs: the SWA learning rate, for all parameter groups or one per group.
        swa_epoch_start: the first SWA epoch (1-based int), or a fraction of ``max_epochs``.
        annealing_epochs: epochs of the annealing to ``swa_lrs``.
        annealing_strategy: ``"cos"`` or ``"linear"``.
        avg_fn: ``(averaged, current, n_averaged) -> averaged`` (default: the equal-weight average).
        device: where the averaged copy lives (default ``"cpu"``, as Lightning's).

    Example:
        >>> swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=1)
        >>> trainer = dltrain.Trainer(max_epochs=3, callbacks=[swa], logger=False, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)  # epochs 2 and 3 anneal to lr 0.01 and are averaged
    """

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: str = "cos", avg_fn: Callable[..., Tensor] | None = None,
                 device: torch.device | str | None = "cpu") -> None:
        if (isinstance(swa_epoch_start, int) and swa_epoch_start < 1) or (
                isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1):
            raise ConfigurationError("StochasticWeightAveraging(swa_epoch_start=...): a >0 int or a float in [0, 1]")
        lrs = [swa_lrs] if isinstance(swa_lrs, float) else swa_lrs
        if not isinstance(lrs, list) or not all(isinstance(lr, float) and lr > 0 for lr in lrs):
            raise ConfigurationError("StochasticWeightAveraging(swa_lrs=...): a positive float or a list of them")
        if annealing_strategy not in ("cos", "linear"):
            raise ConfigurationError(f"annealing_strategy={annealing_strategy!r}: use 'cos' or 'linear'")
        super().__init__(device=device, use_buffers=False,
                         avg_fn=avg_fn or (lambda avg, cur, n: avg + (cur - avg) / (n + 1)))
        self._swa_lrs = swa_lrs
        self._swa_epoch_start = swa_epoch_start
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._swa_scheduler: Any = None
        self._scheduler_state: dict[str, Any] | None = None
        self._start = 0  # zero-based first SWA epoch, resolved at fit start
        self._end: float = math.inf

    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigurationError("StochasticWeightAveraging works with one optimizer")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ConfigurationError("StochasticWeightAveraging works with at most one learning-rate scheduler")
        max_epochs = trainer.max_epochs
        start = self._swa_epoch_start
        if isinstance(start, float):
            if max_epochs is None or max_epochs < 0:
                raise ConfigurationError("StochasticWeightAveraging(swa_epoch_start=<fraction>) needs max_epochs")
            start = int(max_epochs * start)
        self._start = max(int(start) - 1, 0)
        self._end = max_epochs - 1 if max_epochs is not None and max_epochs >= 0 else math.inf
        super().on_fit_start(trainer, task)

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return False  # the average is updated at epoch starts (below), never after steps or at epoch ends

    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        epoch = trainer.current_epoch
        if self._start <= epoch <= self._end and self._swa_scheduler is None:
            self._install_scheduler(trainer)
        if self._start <= epoch <= self._end and epoch > self._latest_update_epoch:
            self._update(task)
            self._latest_update_epoch = epoch

    def _install_scheduler(self, trainer: TrainerView) -> None:
        from torch.optim.swa_utils import SWALR

        from dltrain._optim import SchedulerConfig

        optimizer = trainer.optimizers[0]
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        for lr, group in zip(lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        self._swa_scheduler = SWALR(optimizer, swa_lr=lrs,  # type: ignore[arg-type]  # one per group works
                                    anneal_epochs=self._annealing_epochs,
                                    anneal_strategy=self._annealing_strategy,  # type: ignore[arg-type]
                                    last_epoch=(trainer.max_epochs or 0) if self._annealing_strategy == "cos" else -1)
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        config = SchedulerConfig(scheduler=self._swa_scheduler, interval="epoch", frequency=1)
        if trainer.lr_scheduler_configs:
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        pass  # no update at epoch ends (see on_train_epoch_start)

    @override
    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        pass  # Lightning's SWA validates the weights being trained

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        pass

    @override
    def on_train_end(self, trainer: TrainerView, task: Task) -> None:
        if trainer.current_epoch - 1 < self._start and not trainer.should_stop and self._end != math.inf:
            return  # training ended before SWA started: nothing averaged
        self._copy_average_to(task)
        if any(is_batch_norm(m) for m in task.modules()):
            _recompute_batchnorm(trainer, task)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scheduler_state"] = self._swa_scheduler.state_dict() if self._swa_scheduler is not None else None
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._scheduler_state = state_dict.get("scheduler_state")


@torch.no_grad()
def _recompute_batchnorm(trainer: TrainerView, task: Task) -> None:
    """BatchNorm statistics of the averaged weights.

    A cumulative average over one pass of the training data in train mode
    (``torch.optim.swa_utils.update_bn``), running ``training_step`` as the loop would.
    """
    norms = [m for m in task.modules() if is_batch_norm(m)]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    mode = task.training
    task.train()
    try:
        for batch_idx, batch in enumerate(trainer.train_dataloader):
            if batch_idx >= trainer.num_training_batches:
                break
            batch = task.transfer_batch_to_device(batch, trainer.device, 0)
            task.training_step(batch, batch_idx)
    finally:
        task.train(mode)
        for m, momentum in momenta.items():
            m.momentum = momentum
