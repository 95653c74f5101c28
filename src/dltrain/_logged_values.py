"""The store behind ``Task.log``: values stay on the device until the Trainer reads them.

Reading happens every ``log_every_n_steps`` optimizer steps (step values) and at the end of an epoch (epoch
aggregates); only then are values synchronised across ranks and copied to the host. A training step therefore
costs one dictionary lookup and an attribute write per logged value.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from dltrain._batch import batch_size_of
from dltrain._compat import metric_forward_value
from dltrain.errors import DltrainError, StepError

_REDUCE_FX = ("mean", "sum", "max", "min")
# Lightning also accepts the torch functions themselves.
_REDUCE_NAMES: dict[Any, str] = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}
# Epoch values are kept as a list of per-step tensors, folded into a running sum every so often so that memory
# stays bounded without paying a tensor operation on every step.
_FOLD_EVERY = 256


class _Entry:
    __slots__ = (
        "epoch_fresh",
        "fresh",
        "hook",
        "last",
        "loader",
        "metric",
        "name",
        "on_epoch",
        "on_step",
        "pending",
        "pending_w",
        "prog_bar",
        "reduce_fx",
        "sync_dist",
        "total",
        "weight",
    )

    def __init__(self, name: str, on_step: bool, on_epoch: bool, prog_bar: bool, sync_dist: bool, reduce_fx: str):
        self.name = name
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.prog_bar = prog_bar
        self.sync_dist = sync_dist
        self.reduce_fx = reduce_fx
        self.last: Any = None
        self.loader: int | None = None  # the evaluation loader whose steps log it (None: outside the loaders)
        self.metric: Metric | None = None
        self.fresh = False  # logged since the last step read
        self.epoch_fresh = False  # logged since the last epoch read
        self.pending: list[Tensor] = []
        self.pending_w: list[float] = []
        self.total: Tensor | None = None  # folded epoch aggregate (sum of v*w, or running max/min)
        self.weight = 0.0
        self.hook = "?"  # where it was first logged (error messages)

    def fold(self) -> None:
        if not self.pending:
            return
        values = torch.stack([v.float() for v in self.pending])
        if self.reduce_fx in ("mean", "sum"):
            weights = torch.tensor(self.pending_w, dtype=values.dtype, device=values.device)
            part = (values * weights).sum() if self.reduce_fx == "mean" else values.sum()
            self.total = part if self.total is None else self.total + part
        elif self.reduce_fx == "max":
            part = values.max()
            self.total = part if self.total is None else torch.maximum(self.total, part)
        else:
            part = values.min()
            self.total = part if self.total is None else torch.minimum(self.total, part)
        self.weight += sum(self.pending_w)
        self.pending.clear()
        self.pending_w.clear()


def _as_tensor(value: Any) -> Tensor:
    """A checked value (see `_check`) as a tensor, left on its device."""
    return value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))


def _caller_hook() -> str:
    """The hook (``training_step``, ``on_train_epoch_end``, ...) that called ``self.log``, for error messages.

    That is the nearest frame named like a Task or Callback hook, else the function that called ``self.log``.
    """
    from dltrain.callbacks.base import Callback
    from dltrain.task import Task

    hooks = {n for n in (*vars(Task), *vars(Callback)) if n.startswith("on_") or n.endswith("_step")}
    ours = (__file__, Task.log.__code__.co_filename)
    here = inspect.currentframe()
    frame = here.f_back if here is not None else None
    caller = None
    while frame is not None:
        code = frame.f_code
        internal = code.co_filename in ours and code.co_name in ("log", "log_dict", "_check",
                                                                                   "_caller_hook", "__init__")
        if not internal:
            caller = caller or code.co_name
            if code.co_name in hooks:
                return code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return caller or "?"


def _bad_value(name: str, what: str, advice: str, hook: str, trainer: Any) -> StepError:
    where = f"in {hook} at global step {trainer.global_step} (epoch {trainer.current_epoch})"
    return StepError(f"self.log({name!r}) got {what} {where}; {advice}")


_SCALAR_ADVICE = "log a scalar (e.g. .mean(), or one name per value with log_dict) or a torchmetrics Metric"


def _check(name: str, value: Any, trainer: Any, hook: str | None = None) -> Any:
    """``value`` if it is a scalar: a number, or a tensor of one element (metadata only: no device read)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise _bad_value(name, f"a tensor of shape {tuple(value.shape)}", _SCALAR_ADVICE,
                             hook or _caller_hook(), trainer)
        return value
    if isinstance(value, numbers.Real):  # int, float, bool, NumPy scalars
        return value
    if isinstance(value, Mapping):
        raise _bad_value(name, "a dict", "log each value under its own name with self.log_dict(...)",
                         hook or _caller_hook(), trainer)
    raise _bad_value(name, f"a {type(value).__name__}", "log a tensor, a number or a torchmetrics Metric",
                     hook or _caller_hook(), trainer)


class LoggedValues:
    """Values logged during one stage (training, or one validation/test run)."""

    def __init__(self, training: bool, trainer: Any) -> None:
        self.training = training
        self._trainer = trainer
        self._entries: dict[str, _Entry] = {}
        self.batch: Any = None  # the current batch, for inferring batch sizes (set by the Trainer)
        # With several evaluation loaders: the loader being run, and the name suffix that says so.
        self.dataloader_idx: int | None = None
        self.not_for_loggers: set[str] = set()  # keys logged with logger=False
        # Inside a hook that runs once per epoch or stage (on_train_start, on_train_epoch_start/_end, the
        # evaluation epoch ends): as in Lightning, values logged there are epoch values and on_step=True is refused.
        self.epoch_level = False

    def log(
        self,
        name: str,
        value: Any,
        *,
        on_step: bool | None,
        on_epoch: bool | None,
        prog_bar: bool,
        sync_dist: bool,
        batch_size: int | None,
        reduce_fx: str | Any,
        logger: bool = True,
        add_dataloader_idx: bool = True,
    ) -> None:
        if self.dataloader_idx is not None and add_dataloader_idx:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        entry = self._entries.get(name)
        if entry is None:
            reduce_fx = _REDUCE_NAMES.get(reduce_fx, reduce_fx)
            if reduce_fx not in _REDUCE_FX:
                raise DltrainError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): use one of {_REDUCE_FX}")
            if self.epoch_level:
                if on_step or on_epoch is False:
                    raise DltrainError(
                        f"self.log({name!r}, on_step={on_step}, on_epoch={on_epoch}) in {_caller_hook()}: a hook "
                        "that runs once per epoch logs epoch values only (on_step=False, on_epoch=True, the "
                        "defaults there), as in Lightning; log per-step values from training_step or a batch hook"
                    )
                on_step, on_epoch = False, True
            entry = _Entry(
                name,
                self.training if on_step is None else on_step,
                (not self.training) if on_epoch is None else on_epoch,
                prog_bar,
                sync_dist,
                reduce_fx,
            )
            if not (entry.on_step or entry.on_epoch):
                raise DltrainError(f"self.log({name!r}) with on_step=False and on_epoch=False logs nothing")
            if isinstance(value, Metric):
                entry.hook = _caller_hook()  # once per name: a Metric's value is known only when computed
            entry.loader = self.dataloader_idx
            self._entries[name] = entry
            if not logger:
                self.not_for_loggers.update({name, self._key(entry, "step"), self._key(entry, "epoch")})
        elif self.dataloader_idx is not None and entry.loader is not None and entry.loader != self.dataloader_idx:
            # add_dataloader_idx=False from a second loader: its values would be averaged with the first one's.
            raise DltrainError(
                f"self.log({name!r}, add_dataloader_idx=False) was called while evaluation loader "
                f"{entry.loader} ran and again while loader {self.dataloader_idx} ran: their values would be mixed "
                "into one metric (Lightning refuses this too). Log a name per loader (e.g. with the dataloader_idx "
                "in it), or leave add_dataloader_idx=True to get '/dataloader_idx_<i>' names"
            )
        if type(value) is not Tensor or value.numel() != 1:  # else a scalar tensor (the usual case): checked
            if isinstance(value, Metric):
                cached = metric_forward_value(value) if entry.on_step else None
                if cached is not None:
                    _check(name, cached, self._trainer)
                entry.fresh = True
                entry.epoch_fresh = True
                entry.metric = value
                entry.last = value
                return
            value = _check(name, value, self._trainer)  # before anything is stored
        entry.fresh = True
        entry.epoch_fresh = True
        entry.last = value
        if entry.on_epoch:
            if batch_size is None:
                batch_size = batch_size_of(self.batch) or 1
            entry.pending.append(_as_tensor(value))
            entry.pending_w.append(float(batch_size))
            if len(entry.pending) >= _FOLD_EVERY:
                entry.fold()

    @contextlib.contextmanager
    def epoch_values(self) -> Iterator[None]:
        """Around a hook that runs once per epoch or fit: what it logs are epoch values (see `epoch_level`)."""
        self.epoch_level = True
        try:
            yield
        finally:
            self.epoch_level = False

    # ------------------------------------------------------------------ reading
    def loaders_of_keys(self) -> dict[str, int | None]:
        """The evaluation loader whose steps logged each name (epoch names too); None: outside the loaders."""
        loaders: dict[str, int | None] = {}
        for entry in self._entries.values():
            loaders[entry.name] = loaders[self._key(entry, "epoch")] = entry.loader
        return loaders

    def _key(self, entry: _Entry, suffix: str) -> str:
        return f"{entry.name}_{suffix}" if entry.on_step and entry.on_epoch else entry.name

    def read_step(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Step values logged since the last read: (all, progress-bar ones). Syncs ``sync_dist`` values."""
        values: dict[str, Tensor] = {}
        bar: dict[str, Tensor] = {}
        to_sync: list[tuple[str, Tensor]] = []
        for entry in self._entries.values():
            if not (entry.on_step and entry.fresh):
                continue
            entry.fresh = False
            if entry.metric is not None:
                cached = metric_forward_value(entry.metric)
                if cached is None:
                    continue
                value = _as_tensor(_check(entry.name, cached, self._trainer, entry.hook))
            else:
                value = _as_tensor(entry.last)
            key = self._key(entry, "step")
            if entry.sync_dist:
                to_sync.append((key, value))
            values[key] = value
            if entry.prog_bar:
                bar[key] = value
        if to_sync and self._trainer.world_size > 1:
            stacked = torch.stack([v.float().to(self._trainer.device) for _, v in to_sync])
            reduced = self._trainer.fabric.all_reduce(stacked, group=self._trainer.data_parallel_group, reduce_op="mean")
            for i, (key, _) in enumerate(to_sync):
                values[key] = reduced[i]
                if key in bar:
                    bar[key] = reduced[i]
        return values, bar

    def under_own_names(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The values of entries logged on step and on epoch (``loss_step``, ``loss_epoch``) under their own name.

        Lightning's ``callback_metrics`` hold ``loss`` too (the epoch value, or in training the newest step
        value), so that ``ModelCheckpoint(monitor="loss")`` works; its loggers get the suffixed names only.
        """
        out: dict[str, Tensor] = {}
        for entry in self._entries.values():
            if not (entry.on_step and entry.on_epoch):
                continue
            if (epoch := values.get(f"{entry.name}_epoch")) is not None:
                out[entry.name] = epoch
            elif self.training and (step := values.get(f"{entry.name}_step")) is not None:
                out[entry.name] = step
        return out

    def latest(self, prog_bar: bool = False, for_loggers: bool = False) -> dict[str, Tensor]:
        """The newest value of every step-level entry logged since the last logging step, left on the device.

        That is what ``trainer.callback_metrics`` shows between logging intervals (``prog_bar=True``: only the
        progress bar's entries, under their bar names; ``for_loggers=True``: only what the loggers would get,
        under the names they would get it, as ``trainer.logged_metrics`` shows). ``sync_dist`` values under
        several ranks are left to the logging steps, where they are reduced.
        """
        values: dict[str, Tensor] = {}
        distributed = self._trainer.world_size > 1
        for entry in self._entries.values():
            # Values read at the last logging step were published (synced where asked); a sync_dist value is only
            # known across ranks at a logging step.
            if not (entry.on_step and entry.fresh) or entry.last is None or (entry.sync_dist and distributed):
                continue
            if prog_bar and not entry.prog_bar:
                continue
            last = metric_forward_value(entry.last) if isinstance(entry.last, Metric) else entry.last
            if last is None or (isinstance(last, Tensor) and last.numel() != 1):
                continue  # a Metric's non-scalar forward value: refused where it is read for the loggers
            value = last.detach() if isinstance(last, Tensor) else torch.tensor(float(last))
            key = self._key(entry, "step")
            if for_loggers:
                if key not in self.not_for_loggers:
                    values[key] = value
                continue
            values[key] = value
            if not prog_bar:
                values[entry.name] = value
        return values

    def read_epoch(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Epoch aggregates over every data-parallel rank, then reset for the next epoch.

        Exact: weighted by batch sizes; tensor-parallel peers, which saw the same samples, count once. Epoch
        aggregates are always reduced across ranks: it costs a few collectives per epoch and makes
        distributed evaluation exact whatever the number of batches each rank ran.
        """
        trainer = self._trainer
        distributed = trainer.world_size > 1
        # Only what was logged since the last read: the Trainer reads again after the epoch-end callbacks, which
        # may log too, and older values must not be reported twice.
        names = sorted(n for n, e in self._entries.items() if e.on_epoch and e.epoch_fresh)
        if distributed:
            # Ranks may have logged different names (a rank with no evaluation batch logs nothing).
            gathered: list[list[str]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))
        values: dict[str, Tensor] = {}
        bar: dict[str, Tensor] = {}
        device = trainer.device
        sums: dict[str, list[Tensor]] = {"mean": [], "sum": [], "max": [], "min": []}
        order: dict[str, list[str]] = {"mean": [], "sum": [], "max": [], "min": []}
        for name in names:
            entry = self._entries.get(name)
            if entry is not None:
                entry.epoch_fresh = False
            if entry is not None and entry.metric is not None:
                if distributed and entry.metric.process_group is None:
                    # A Metric syncs over every rank unless told otherwise; tensor-parallel peers hold the same
                    # samples, so its states would count them once per peer.
                    entry.metric.process_group = trainer.data_parallel_group
                computed = entry.metric.compute()
                entry.metric.reset()
                if not isinstance(computed, Tensor) or computed.numel() != 1:
                    what = (f"a shape {tuple(computed.shape)}" if isinstance(computed, Tensor)
                            else f"a {type(computed).__name__}")
                    raise _bad_value(name, f"a torchmetrics {type(entry.metric).__name__} whose compute() "
                                     f"returned {what}", "log a Metric that computes a scalar (e.g. "
                                     "average='macro'), or log its values one by one", entry.hook, trainer)
                values[self._key(entry, "epoch")] = computed.detach()
                continue
            if entry is None:
                # A name another rank logged: contribute nothing. The reduce op is unknown here, so assume the
                # default ("mean"); ranks that log the same name with different reduce_fx are a user error.
                order["mean"].append(name)
                sums["mean"].append(torch.zeros(2, device=device))
                continue
            entry.fold()
            fx = entry.reduce_fx
            total = entry.total if entry.total is not None else torch.zeros((), device=device)
            if fx in ("max", "min") and entry.total is None:
                total = torch.tensor(float("-inf") if fx == "max" else float("inf"), device=device)
            sums[fx].append(torch.stack([total.float().to(device), torch.tensor(entry.weight, device=device)]))
            order[fx].append(name)
        for fx, parts in sums.items():
            if not parts:
                continue
            stacked = torch.stack(parts)
            if distributed:
                op = {"mean": "sum", "sum": "sum", "max": "max", "min": "min"}[fx]
                # Over the data-parallel ranks: tensor-parallel peers logged the same samples' values.
                stacked = trainer.fabric.all_reduce(stacked, group=trainer.data_parallel_group, reduce_op=op)
            for i, name in enumerate(order[fx]):
                total, weight = stacked[i, 0], stacked[i, 1]
                entry = self._entries.get(name)
                key = self._key(entry, "epoch") if entry is not None else name
                if float(weight) == 0:
                    continue  # no rank logged it since the last read
                values[key] = total / weight if fx == "mean" else total
        for entry in self._entries.values():
            key = self._key(entry, "epoch")
            if entry.on_epoch and entry.prog_bar and key in values:
                bar[key] = values[key]
            entry.total = None
            entry.weight = 0.0
        return values, bar

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Epoch aggregates so far (so a resumed epoch reports the same epoch means)."""
        state = {}
        for name, entry in self._entries.items():
            if entry.on_epoch and entry.metric is None:
                entry.fold()
                state[name] = {
                    "total": None if entry.total is None else entry.total.detach().cpu(),
                    "weight": entry.weight,
                    "on_step": entry.on_step,
                    "prog_bar": entry.prog_bar,
                    "sync_dist": entry.sync_dist,
                    "reduce_fx": entry.reduce_fx,
                }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, s in state.items():
            entry = _Entry(name, s["on_step"], True, s["prog_bar"], s["sync_dist"], s["reduce_fx"])
            entry.total = None if s["total"] is None else s["total"].to(self._trainer.device)
            entry.weight = s["weight"]
            entry.epoch_fresh = entry.weight > 0
            self._entries[name] = entry
