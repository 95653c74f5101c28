"""`Task`: the model, its loss, its optimizers and its metrics, with Lightning's hook names."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dltrain._hparams import HyperparametersMixin
from dltrain._refusals import refuse
from dltrain.errors import ConfigurationError, DltrainError, NotAttachedError

if TYPE_CHECKING:
    from torchmetrics import Metric

    from dltrain._engine import Engine
    from dltrain._hooks import HookDispatcher
    from dltrain.loggers.base import Logger
    from dltrain.trainer import Trainer

__all__ = ["Task", "attach", "log_into", "logging_into"]


class Task(HyperparametersMixin, nn.Module):
    """Subclass this to describe what to train. A plain ``nn.Module``: no attribute magic.

    Override ``training_step`` and ``configure_optimizers``; the other hooks are optional and keep Lightning's
    names, arguments and meaning, so a ``LightningModule`` moves over by renaming its base class. The Trainer calls
    a per-batch hook only when the task overrides it. ``automatic_optimization = False`` hands the optimizer steps
    to ``training_step`` (``self.optimizers()``, ``self.manual_backward(loss)``), as in Lightning.

    ``training_step`` returns the loss: a scalar tensor, or a mapping with a ``"loss"`` entry (the other entries are
    passed to callbacks as the step's outputs). Returning ``None`` skips the step: no backward and no optimizer step
    for that batch (with gradient accumulation, the batch simply contributes nothing).

    Example:
        >>> import torch, dltrain
        >>> class Regression(dltrain.Task):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         loss = torch.nn.functional.mse_loss(self.net(x), y)
        ...         self.log("train/loss", loss)
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    """

    #: Where a checkpoint keeps the hyperparameters (Lightning's names for the keys; dltrain's key is "hparams").
    CHECKPOINT_HYPER_PARAMS_KEY = "hparams"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"
    # Properties TorchScript must not compile (to_torchscript scripts the module and reads its properties).
    __jit_unused_properties__: list[str] = [
        "trainer", "device", "dtype", "on_gpu", "global_rank", "local_rank", "current_epoch", "global_step",
        "logger", "loggers", "device_mesh", "example_input_array", "strict_loading", "fabric", "hparams",
        "hparams_initial",
    ]

    def __init__(self) -> None:
        super().__init__()
        # Plain attributes (not buffers or submodules): set by the Trainer while it runs this task (`attach`,
        # `log_into`): the Trainer, its engine and hook dispatcher (manual optimization), the store `log` writes to.
        self._trainer: Trainer | None = None
        self._engine: Engine | None = None
        self._hooks: HookDispatcher | None = None
        self._results: Any = None
        self.automatic_optimization = True
        self._frozen_by_toggle: dict[nn.Parameter, bool] = {}
        self._example_input_array: Any = None
        self._strict_loading: bool | None = None
        self._jit_is_scripting = False  # to_torchscript: TorchScript reads every attribute, `trainer` included

    # ------------------------------------------------------------------ context
    @property
    def trainer(self) -> Trainer:
        """The Trainer running this task (raises outside ``fit``/``validate``/``test``/``predict``)."""
        if self._trainer is None and not self._jit_is_scripting:
            raise NotAttachedError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(task, ...)")
        return self._trainer  # type: ignore[return-value]  # None only while to_torchscript scripts the task

    def _run_parts(self) -> tuple[Engine, HookDispatcher]:
        """The engine and hook dispatcher of the Trainer running this task (raises outside its stages)."""
        if self._trainer is None or self._engine is None or self._hooks is None:
            raise NotAttachedError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(task, ...)")
        return self._engine, self._hooks

    @property
    def device(self) -> torch.device:
        """The device the task's parameters live on."""
        if self._trainer is not None:
            return self._trainer.device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the task's (first floating-point) parameters."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def on_gpu(self) -> bool:
        """Whether the task runs on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes (0 outside a run)."""
        return 0 if self._trainer is None else self._trainer.global_rank

    @property
    def local_rank(self) -> int:
        """This process's rank on its machine (0 outside a run)."""
        return 0 if self._trainer is None else self._trainer.local_rank

    @property
    def current_epoch(self) -> int:
        """The Trainer's current epoch (0 outside a run)."""
        return 0 if self._trainer is None else self._trainer.current_epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (0 outside a run)."""
        return 0 if self._trainer is None else self._trainer.global_step

    @property
    def logger(self) -> Logger | None:
        """The Trainer's first logger (``None`` without one, or outside a run)."""
        return None if self._trainer is None else self._trainer.logger

    @property
    def loggers(self) -> list[Logger]:
        """The Trainer's loggers (none outside a run)."""
        return [] if self._trainer is None else self._trainer.loggers

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    @property
    def fabric(self) -> None:
        """``None``: Lightning's ``LightningModule.fabric`` is set only when a ``Fabric`` runs the module.

        That is never the case under a Trainer. The Trainer's Fabric is ``self.trainer.fabric``.
        """
        return None

    @property
    def example_input_array(self) -> Any:
        """An input for ``self(...)``: a tensor, a tuple of positional arguments or a dict of keyword ones.

        The model summary shows each layer's input and output sizes for it; ``to_onnx``/``to_torchscript`` use
        it.
        """
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    @property
    def strict_loading(self) -> bool:
        """Whether loading a checkpoint into this task requires its keys to match the task's exactly.

        Default ``True``; set ``False`` for a task that saves only some weights.
        """
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, strict: bool) -> None:
        self._strict_loading = strict

    # ------------------------------------------------------------------ utilities
    def freeze(self) -> None:
        """No parameter requires gradients, and the task is in ``eval()`` mode (for inference)."""
        for param in self.parameters():
            param.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        """Every parameter requires gradients again, and the task is in ``train()`` mode."""
        for param in self.parameters():
            param.requires_grad = True
        self.train()

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather ``data`` (a tensor, a number, or a collection of them) from every rank.

        Each tensor gets a new first dimension of size ``world_size`` (on one process it is returned as it
        is).

        Args:
            data: what to gather; every rank must pass the same structure and shapes.
            group: the process group (default: every rank).
            sync_grads: let gradients flow back through the gather (for losses computed over every rank's outputs):
                rank ``r``'s input gets the sum over ranks of the gradients of their results' row ``r``.
        """
        from lightning.fabric.utilities.apply_func import convert_to_tensors
        from lightning_utilities.core.apply_func import apply_to_collection

        from dltrain.distributed import all_gather_tensor

        data = convert_to_tensors(data, device=self.device)  # numbers become tensors, as in Lightning
        return apply_to_collection(data, Tensor, all_gather_tensor, group=group, sync_grads=sync_grads)

    @torch.no_grad()
    def to_onnx(self, file_path: str | os.PathLike[str] | Any, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export the task's ``forward`` to ONNX with ``torch.onnx.export`` (needs ``pip install dltrain[onnx]``).

        Args:
            file_path: where to write the ``.onnx`` file (or a file-like object).
            input_sample: an input for ``forward``; default ``example_input_array``.
            **kwargs: passed to ``torch.onnx.export`` (``input_names``, ``dynamic_axes``, ``opset_version``, ...).
        """
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigurationError(f"to_onnx() needs {' and '.join(missing)}: pip install dltrain[onnx]")
        sample = self._example_input(input_sample, "to_onnx")
        mode = self.training
        self.eval()
        try:
            args = sample if isinstance(sample, tuple) else (sample,)
            return torch.onnx.export(self, args, file_path, **kwargs)
        finally:
            self.train(mode)

    @torch.no_grad()
    def to_torchscript(self, file_path: str | os.PathLike[str] | None = None, method: str = "script",
                       example_inputs: Any = None, **kwargs: Any) -> Any:
        """The task as TorchScript, in ``eval()`` mode; saved to ``file_path`` when given.

        Args:
            file_path: where to save it (``None``: not saved).
            method: ``"script"`` (``torch.jit.script``) or ``"trace"`` (``torch.jit.trace``).
            example_inputs: the input to trace with (default: ``example_input_array``).
            **kwargs: passed to ``torch.jit.script``/``torch.jit.trace``.
        """
        mode = self.training
        self.eval()
        self._jit_is_scripting = True
        try:
            if method == "script":
                scripted = torch.jit.script(self, **kwargs)
            elif method == "trace":
                sample = self._example_input(example_inputs, "to_torchscript(method='trace')")
                scripted = torch.jit.trace(self, example_inputs=sample, **kwargs)
            else:
                raise ConfigurationError(f"to_torchscript(method={method!r}): use 'script' or 'trace'")
        finally:
            self._jit_is_scripting = False
            self.train(mode)
        if file_path is not None:
            torch.jit.save(scripted, str(file_path))
        return scripted

    def to_tensorrt(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: TensorRT export needs torch_tensorrt; export with ``to_onnx`` or ``to_torchscript``."""
        refuse("lightning.pytorch.LightningModule.to_tensorrt")

    def _example_input(self, given: Any, caller: str) -> Any:
        sample = given if given is not None else self.example_input_array
        if sample is None:
            raise ConfigurationError(
                f"{caller} needs an input for forward: pass one, or set self.example_input_array in __init__"
            )
        return _to_device(sample, self.device)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | Mapping[str, Any] | None:
        """Compute and return the training loss for one batch (``None`` skips the batch)."""
        raise DltrainError(f"{type(self).__name__} must override training_step(batch, batch_idx) to be trained")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """Evaluate one validation batch; log metrics with ``self.log`` (epoch means by default).

        With several validation loaders it is called with a third argument, ``dataloader_idx``.
        """

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        """Evaluate one test batch; log metrics with ``self.log``."""

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """Return the prediction for one batch. Default: ``self(batch)``."""
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return the optimizers and LR schedulers to train with, in one of Lightning's forms.

        That is an optimizer, several, ``(optimizers, schedulers)``, ``{"optimizer": ..., "lr_scheduler":
        ...}`` or a list of such dicts. A scheduler may be a scheduler or a dict ``{"scheduler": s,
        "interval": "step"|"epoch", "frequency": n, "monitor": "val/loss"}`` (``monitor`` for
        ``ReduceLROnPlateau``). Several optimizers need ``automatic_optimization = False``, as in Lightning.
        """
        raise DltrainError(f"{type(self).__name__} must override configure_optimizers() to be trained")

    def configure_callbacks(self) -> Any:
        """Callbacks this task needs (a callback or a list); they replace the Trainer's callbacks of the same type."""
        return []

    def configure_model(self) -> None:
        """Create (sharded) layers here instead of ``__init__``; called once per Trainer before optimizers.

        Under ``strategy="fsdp2"`` (or a ``ModelParallelStrategy``) a task may shard itself here with
        ``fully_shard``/``parallelize_module`` on ``self.device_mesh``; the default plan is then skipped.
        """
        if type(self).configure_sharded_model is not Task.configure_sharded_model:
            refuse("lightning.pytorch.LightningModule.configure_sharded_model")

    def configure_sharded_model(self) -> None:
        """Refused: Lightning 2 deprecated it for ``configure_model``, which dltrain calls."""
        refuse("lightning.pytorch.LightningModule.configure_sharded_model")

    def train_dataloader(self) -> Any:
        """The training loader, when the task makes its own (else pass loaders or a DataModule to ``fit``)."""
        raise ConfigurationError(f"{type(self).__name__} has no train_dataloader(): define it, or pass loaders to fit")

    def val_dataloader(self) -> Any:
        """The validation loader(s), when the task makes its own."""
        raise ConfigurationError(f"{type(self).__name__} has no val_dataloader(): define it, or pass loaders")

    def test_dataloader(self) -> Any:
        """The test loader(s), when the task makes its own."""
        raise ConfigurationError(f"{type(self).__name__} has no test_dataloader(): define it, or pass loaders")

    def predict_dataloader(self) -> Any:
        """The prediction loader(s), when the task makes its own."""
        raise ConfigurationError(f"{type(self).__name__} has no predict_dataloader(): define it, or pass loaders")

    @property
    def device_mesh(self) -> Any:
        """The strategy's device mesh (``"data_parallel"``, ``"tensor_parallel"`` dimensions), or ``None``.

        There is one under ``strategy="fsdp2"`` or a ``ModelParallelStrategy``.
        """
        trainer = self._trainer
        return getattr(trainer.strategy, "device_mesh", None) if trainer is not None else None

    # ------------------------------------------------------------------ manual optimization
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer (several: a list) from ``configure_optimizers``, for manual optimization.

        Its ``step()`` counts a training step and runs the ``on_before_optimizer_step`` hooks, as in
        Lightning.
        """
        engine, _ = self._run_parts()
        opts = engine.manual_optimizers if use_pl_optimizer else engine.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler (several: a list; none: ``None``); with manual optimization, step them yourself."""
        schedulers = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` through the strategy and precision (gradient sync under DDP, loss scaling)."""
        engine, hooks = self._run_parts()
        if self.automatic_optimization:
            raise ConfigurationError("manual_backward() is for manual optimization: set self.automatic_optimization = "
                                     "False in __init__, or return the loss from training_step")
        hooks.call("on_before_backward", loss)
        engine.manual_backward(loss, *args, **kwargs)
        hooks.call("on_after_backward")

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Let only ``optimizer``'s parameters require grad (for several optimizers, as in GANs)."""
        own = {id(p) for group in _inner(optimizer).param_groups for p in group["params"]}
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in own and p not in self._frozen_by_toggle:
                        self._frozen_by_toggle[p] = p.requires_grad
                        p.requires_grad = False

    def untoggle_optimizer(self, optimizer: Any) -> None:
        """Undo ``toggle_optimizer``."""
        for p, requires_grad in self._frozen_by_toggle.items():
            p.requires_grad = requires_grad
        self._frozen_by_toggle = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Generator[None, None, None]:
        """``toggle_optimizer(optimizer)`` for the ``with`` block, ``untoggle_optimizer`` after it (also on error)."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Compute the gradients of ``loss``; override it to change how.

        The loss is already scaled for mixed precision and divided for gradient accumulation. The Trainer
        calls it for automatic optimization and ``manual_backward``, with the
        ``on_before_backward``/``on_after_backward`` hooks around it.
        """
        loss.backward(*args, **kwargs)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or value."""
        if gradient_clip_val is None:
            return
        engine, _ = self._run_parts()
        engine.clip(_inner(optimizer), gradient_clip_val, gradient_clip_algorithm or "norm")

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value: Tensor | float | int | Metric,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record a value; the Trainer sends it to the loggers. Lightning's arguments, in Lightning's order.

        Nothing is read back from the device here: values stay tensors and are reduced every
        ``log_every_n_steps`` (``on_step``) or at the end of the epoch (``on_epoch``).

        Args:
            name: metric name, for example ``"train/loss"``.
            value: a tensor, a number, or a torchmetrics ``Metric`` (computed, synced across ranks and reset at
                the end of the epoch).
            prog_bar: also show it on the progress bar.
            logger: send it to the loggers (default True); ``False`` keeps it in ``callback_metrics`` only.
            on_step: log the value of every logging step. Default: True in training, False in evaluation.
            on_epoch: log the epoch aggregate. Default: False in training, True in evaluation.
            reduce_fx: ``"mean"``, ``"sum"``, ``"max"`` or ``"min"`` (or ``torch.mean``/``sum``/``max``/``min``).
            sync_dist: reduce the value across ranks when it is read (every logging interval / epoch end).
            add_dataloader_idx: with several evaluation loaders, suffix the name with ``/dataloader_idx_<i>``.
            batch_size: weight of this value in the epoch mean; inferred from the batch when not given.
            rank_zero_only: accepted for Lightning compatibility (only rank zero writes to loggers anyway).
            enable_graph: accepted for Lightning compatibility; ignored (logged values are detached).
            sync_dist_group: accepted for Lightning compatibility; ignored.
            metric_attribute: accepted for Lightning compatibility; ignored.
        """
        if self._results is None:
            raise DltrainError(
                f"self.log({name!r}) was called outside a Trainer loop; log from training_step, validation_step, "
                "test_step or an epoch hook"
            )
        self._results.log(
            name, value, on_step=on_step, on_epoch=on_epoch, prog_bar=prog_bar, sync_dist=sync_dist,
            batch_size=batch_size, reduce_fx=reduce_fx, logger=logger is not False,
            add_dataloader_idx=add_dataloader_idx,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Tensor | float | int | Metric] | Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``self.log`` for every item of ``dictionary``, with the same options.

        ``dictionary`` is a mapping of names to values, or a torchmetrics ``MetricCollection``; the other
        arguments are `log`'s.
        """
        for name, value in dictionary.items():
            self.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                     sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
                     rank_zero_only=rank_zero_only)

    # ------------------------------------------------------------------ hooks (Lightning's names and arguments)
    # Each runs after the callbacks' hook of the same name (`dltrain.Callback` says when, in more detail),
    # except the epoch-end hooks, which run before theirs.
    def prepare_data(self) -> None:
        """Download data (once per machine), when the task makes its own loaders."""

    def setup(self, stage: str) -> None:
        """Called at the start of ``fit``/``validate``/``test``/``predict`` on every rank.

        It runs after the callbacks' ``setup``, before ``configure_model``, the data loaders and
        ``configure_optimizers``: build what depends on the data or the rank here.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """

    def teardown(self, stage: str) -> None:
        """Called at the end of every stage, also after an exception, after the callbacks' ``teardown``.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """

    def on_fit_start(self) -> None:
        """Called in ``fit`` once all is set up, before the sanity check and the first epoch."""

    def on_fit_end(self) -> None:
        """Called at the end of a ``fit`` that raised nothing."""

    def on_train_start(self) -> None:
        """Called after the sanity check, before the first training epoch."""

    def on_train_end(self) -> None:
        """Called when training stops without an exception, before ``on_fit_end``."""

    def on_validation_start(self) -> None:
        """Called when a validation starts (in ``fit`` and in ``validate``), in ``eval()`` mode."""

    def on_validation_end(self) -> None:
        """Called when a validation ends, after ``on_validation_epoch_end``."""

    def on_test_start(self) -> None:
        """Called when ``test`` starts, in ``eval()`` mode."""

    def on_test_end(self) -> None:
        """Called when ``test`` ends, after ``on_test_epoch_end``."""

    def on_predict_start(self) -> None:
        """Called when ``predict`` starts, in ``eval()`` mode."""

    def on_predict_end(self) -> None:
        """Called when ``predict`` ends, after ``on_predict_epoch_end``."""

    def on_train_epoch_start(self) -> None:
        """Called at the start of every training epoch, before its first batch."""

    def on_train_epoch_end(self) -> None:
        """Called at the end of every training epoch, after its epoch-end validation.

        It runs before the epoch's values are reduced and before the callbacks' hook, so what it logs is part
        of the epoch's values.
        """

    def on_validation_epoch_start(self) -> None:
        """Called before the first batch of a validation."""

    def on_validation_epoch_end(self) -> None:
        """Called after the last batch of a validation, before its values are reduced and callbacks' hooks."""

    def on_test_epoch_start(self) -> None:
        """Called before the first test batch."""

    def on_test_epoch_end(self) -> None:
        """Called after the last test batch, before the values are reduced and the callbacks' hook."""

    def on_predict_epoch_start(self) -> None:
        """Called before the first prediction batch."""

    def on_predict_epoch_end(self) -> None:
        """Called after the last prediction batch."""

    def on_validation_model_eval(self) -> None:
        """Put the task in evaluation mode for a validation (default: ``self.eval()``)."""
        self.eval()

    def on_validation_model_train(self) -> None:
        """Put the task back in training mode after a validation in ``fit`` (default: ``self.train()``)."""
        self.train()

    def on_validation_model_zero_grad(self) -> None:
        """Called at the start of a validation run when overridden.

        Lightning zeroes gradients there by default; dltrain leaves a running accumulation window's gradients
        alone.
        """

    def on_test_model_eval(self) -> None:
        """Put the task in evaluation mode for ``test`` (default: ``self.eval()``)."""
        self.eval()

    def on_test_model_train(self) -> None:
        """Lightning's hook to put the task back in training mode after a test; dltrain does not call it."""
        self.train()

    def on_predict_model_eval(self) -> None:
        """Put the task in evaluation mode for ``predict`` (default: ``self.eval()``)."""
        self.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Called before ``training_step``; return ``-1`` to end the epoch here (as in Lightning).

        Args:
            batch: the batch, on the device.
            batch_idx: its index in the epoch.
        """

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Called after every training batch (its step, backward and, when due, optimizer step).

        Args:
            outputs: what ``training_step`` returned.
            batch: the batch.
            batch_idx: its index in the epoch.
        """

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before ``validation_step``.

        Args:
            batch: the batch, on the device.
            batch_idx: its index in its loader.
            dataloader_idx: which validation loader (with several).
        """

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after ``validation_step``.

        Args:
            outputs: what ``validation_step`` returned.
            batch: the batch.
            batch_idx: its index in its loader.
            dataloader_idx: which validation loader (with several).
        """

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before ``test_step``.

        Args:
            batch: the batch, on the device.
            batch_idx: its index in its loader.
            dataloader_idx: which test loader (with several).
        """

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after ``test_step``.

        Args:
            outputs: what ``test_step`` returned.
            batch: the batch.
            batch_idx: its index in its loader.
            dataloader_idx: which test loader (with several).
        """

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before ``predict_step``.

        Args:
            batch: the batch, on the device.
            batch_idx: its index in its loader.
            dataloader_idx: which prediction loader (with several).
        """

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after ``predict_step``.

        Args:
            outputs: what ``predict_step`` returned.
            batch: the batch.
            batch_idx: its index in its loader.
            dataloader_idx: which prediction loader (with several).
        """

    def on_before_backward(self, loss: Tensor) -> None:
        """Called before the backward pass (``manual_backward`` too).

        Args:
            loss: the loss about to be backpropagated (divided by ``accumulate_grad_batches`` when
                accumulating).
        """

    def on_after_backward(self) -> None:
        """Called after the backward pass, before gradient clipping and the optimizer step."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called before each optimizer step, with the accumulation window's gradients complete.

        Args:
            optimizer: the optimizer about to step.
        """

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Called before the gradients are zeroed (at the first batch of each accumulation window).

        Args:
            optimizer: the optimizer whose gradients are zeroed.
        """

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """Step ``optimizer`` (override for warm-up and the like; call ``optimizer.step(closure=optimizer_closure)``).

        The closure returns the batch's loss: training_step and backward have run before it (LBFGS-style
        optimizers that re-evaluate the loss need manual optimization).
        """
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Zero ``optimizer``'s gradients; called at the first batch of each accumulation window.

        Args:
            epoch: the current epoch.
            batch_idx: the batch's index in the epoch.
            optimizer: the optimizer whose gradients to zero.
        """
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step ``scheduler`` (with ``metric`` for ``ReduceLROnPlateau``)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip gradients before the optimizer step (default: the Trainer's ``gradient_clip_val``)."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Transform a batch before it moves to the device; return the batch to move (default: as it is).

        Args:
            batch: the batch, as the loader made it.
            dataloader_idx: which loader it comes from (0 with one).
        """
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device`` (tensors in nested lists, tuples, dicts, dataclasses)."""
        from lightning.fabric.utilities.apply_func import move_data_to_device

        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Transform a batch once it is on the device (batch augmentation such as MixUp, log-mel features).

        ``self.training`` tells training from evaluation.
        """
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to a checkpoint before it is written."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read entries you added in ``on_save_checkpoint``."""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike[str], map_location: Any = None,
                             hparams_file: str | os.PathLike[str] | None = None, strict: bool | None = None,
                             weights_only: bool | None = None, storage_options: dict[str, Any] | None = None,
                             **kwargs: Any) -> Task:
        """A task built from a checkpoint's hyperparameters (``kwargs`` override them) with its weights.

        ``checkpoint_path`` may be a URL of an object store (``s3://...``; ``storage_options`` go to fsspec).
        Loading is safe (``weights_only=True``): hyperparameters that were not plain values were stored as their
        ``repr`` and must be passed again in ``kwargs``. ``hparams_file`` (YAML) replaces the checkpoint's
        hyperparameters. ``strict=None`` follows the task's ``strict_loading``. A checkpoint written with weight
        averaging (``WeightAveraging``, ``EMAWeightAveraging``, ``StochasticWeightAveraging``) gives the averaged
        weights, as in Lightning.
        """
        from dltrain import checkpoint as ckpt_io

        if weights_only is False:
            raise ConfigurationError(
                "load_from_checkpoint(weights_only=False): dltrain checkpoints hold plain types only and are always "
                "loaded with weights_only=True (no pickled code runs); pass non-plain hyperparameters as keywords"
            )
        checkpoint = ckpt_io.load(checkpoint_path, storage_options)
        where = f"the hyperparameters in {str(hparams_file or checkpoint_path)!r}"
        task: Task = ckpt_io.build_from_hparams(cls, checkpoint.get("hparams", {}), kwargs, hparams_file, where)
        strict = task.strict_loading if strict is None else strict
        if "averaged_state_dict" in checkpoint:  # weight averaging: the averaged weights are the model's result
            checkpoint["state_dict"] = checkpoint["averaged_state_dict"]
        elif checkpoint.get("sharded"):  # a directory of shards (strategy="fsdp2"): read whole, in this process
            from dltrain import _sharded

            shards = checkpoint.pop("_shards", str(checkpoint_path))
            if strict:
                _sharded.check_model(task, shards)
            checkpoint["state_dict"] = _sharded.read_model(task, shards)
        task.on_load_checkpoint(checkpoint)
        if strict:
            ckpt_io.check_state_dict(task, checkpoint["state_dict"], str(checkpoint_path))
        task.load_state_dict(checkpoint["state_dict"], strict=strict)
        if map_location is not None:
            task.to(torch.device(map_location) if isinstance(map_location, str) else map_location)
        return task

    def _zero_grad_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """A loss whose gradient is zero for every trainable parameter.

        A rank with nothing to contribute to a step (its batch was skipped) still joins DDP's gradient all-reduce
        with it; the Trainer calls it through the strategy's wrapper (``mark_forward_method``) when no forward ran.
        """
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), zero)


def _to_device(data: Any, device: torch.device) -> Any:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(data, device)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Fabric's or dltrain's wrappers."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


# The Trainer's hand-over to the task it runs. Functions of this module, so that the task's run-time links stay
# private to it (the one place outside Task's methods that writes them).
def attach(task: Task, trainer: Trainer | None, engine: Engine | None = None,
           hooks: HookDispatcher | None = None) -> None:
    """Link ``task`` to the Trainer running it (``None``: detach).

    Its engine and hooks serve manual optimization.
    """
    task._trainer = trainer  # noqa: SLF001  Task's own module
    task._engine = engine  # noqa: SLF001  Task's own module
    task._hooks = hooks  # noqa: SLF001  Task's own module


def log_into(task: Task, store: Any) -> None:
    """Route ``task.log`` to ``store`` (a loop's `dltrain._logged_values.LoggedValues`; ``None``: nowhere)."""
    task._results = store  # noqa: SLF001  Task's own module


def logging_into(task: Task) -> Any:
    """The store ``task.log`` writes to now (`log_into`; ``None``: nowhere).

    ``trainer.state`` reads whether it is a training store.
    """
    return task._results  # noqa: SLF001  Task's own module
