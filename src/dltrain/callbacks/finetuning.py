"""`BaseFinetuning` and `BackboneFinetuning`: freeze parts of a model, unfreeze them later into new param groups.

Lightning's callbacks of the same names, with the same methods and semantics. They rely on the Trainer's hook
order: callback ``setup`` runs before ``configure_optimizers`` (so an optimizer built over
``filter(lambda p: p.requires_grad, self.parameters())`` leaves the frozen modules out), and
``on_train_epoch_start`` sees ``trainer.optimizers``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Module, ModuleDict
from typing_extensions import override

from dltrain._compat import is_batch_norm
from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["BackboneFinetuning", "BaseFinetuning"]

log = logging.getLogger(__name__)

Modules = Module | Iterable[Module | Iterable[Any]]


class BaseFinetuning(Callback, ABC):
    """Freeze modules before training and unfreeze them during it, each into a new optimizer param group.

    Override ``freeze_before_training(task)`` (called from ``setup``, before ``configure_optimizers``) and
    ``finetune_function(task, epoch, optimizer)`` (called at the start of every training epoch, once per
    optimizer). The param groups this adds are part of the callback's state, so a resumed fit rebuilds them
    before the optimizer's state is loaded into it.

    Example:
        >>> class UnfreezeAt(BaseFinetuning):
        ...     def __init__(self, epoch: int = 2):
        ...         super().__init__()
        ...         self.epoch = epoch
        ...     def freeze_before_training(self, task):
        ...         self.freeze(task.backbone)
        ...     def finetune_function(self, task, epoch, optimizer):
        ...         if epoch == self.epoch:
        ...             self.unfreeze_and_add_param_group(task.backbone, optimizer, train_bn=True)
    """

    def __init__(self) -> None:
        # optimizer index -> its param groups, parameters named (not the tensors) and without "params" state
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False
        self._trainable: set[str] | None = None  # parameters that trained when the checkpoint was taken
        self._task: Any = None

    # ------------------------------------------------------------------ state (resume)
    @override
    def state_dict(self) -> dict[str, Any]:
        trainable = [] if self._task is None else [n for n, p in self._task.named_parameters() if p.requires_grad]
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata, "trainable": trainable}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the param groups of the checkpoint; ``on_fit_start`` puts them back into the optimizers."""
        metadata = state_dict.get("internal_optimizer_metadata", {})
        self._internal_optimizer_metadata = {int(k): list(v) for k, v in metadata.items()}
        self._trainable = set(state_dict["trainable"]) if "trainable" in state_dict else None
        self._restarting = True

    # ------------------------------------------------------------------ module helpers
    @staticmethod
    def flatten_modules(modules: Modules) -> list[Module]:
        """The modules that hold parameters themselves: leaves, and parents with direct parameters.

        ``modules`` is a module, a ``ModuleDict`` or any (nested) iterable of them.
        """
        found: list[Module] = []

        def visit(item: Any) -> None:
            if isinstance(item, ModuleDict):
                for child in item.values():
                    visit(child)
            elif isinstance(item, Module):
                found.extend(m for m in item.modules()
                             if next(m.children(), None) is None or next(m.parameters(recurse=False), None) is not None)
            elif isinstance(item, Iterable):
                for child in item:
                    visit(child)
            else:
                raise TypeError(f"expected a torch.nn.Module or an iterable of them, got {type(item).__name__}")

        visit(modules)
        return found

    @staticmethod
    def filter_params(
        modules: Modules, train_bn: bool = True, requires_grad: bool = True
    ) -> Generator[torch.nn.Parameter, None, None]:
        """The parameters of ``modules`` whose ``requires_grad`` is ``requires_grad``, each once.

        BatchNorm parameters are left out unless ``train_bn``.
        """
        seen: set[int] = set()
        for module in BaseFinetuning.flatten_modules(modules):
            if is_batch_norm(module) and not train_bn:
                continue
            for param in module.parameters(recurse=False):
                if param.requires_grad == requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Set ``requires_grad`` on every parameter of ``modules``; BatchNorm layers track running stats again."""
        for module in BaseFinetuning.flatten_modules(modules):
            if is_batch_norm(module):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze the direct parameters of ``module``; a BatchNorm layer also stops tracking running stats."""
        if is_batch_norm(module):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze every parameter of ``modules``; with ``train_bn`` the BatchNorm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if train_bn and is_batch_norm(module):
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """``params`` less those already in one of ``optimizer``'s param groups (with a warning naming the fix)."""
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        kept: list[torch.nn.Parameter] = []
        skipped = 0
        for param in params:
            if id(param) in present:
                skipped += 1
            else:
                kept.append(param)
        if skipped:
            log.warning(
                "%d of the parameters to unfreeze are already in a param group of %s and are skipped. Build the "
                "optimizer in configure_optimizers over the trainable parameters only: "
                "%s(filter(lambda p: p.requires_grad, self.parameters()), ...)",
                skipped, type(optimizer).__name__, type(optimizer).__name__,
            )
        return kept

    @staticmethod
    def unfreeze_and_add_param_group(
        modules: Modules,
        optimizer: Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Make ``modules`` trainable and add their parameters to ``optimizer`` as one new param group.

        The group's learning rate is ``lr`` when given, else the first group's ``lr / initial_denom_lr``.
        Parameters already in the optimizer are not added again.
        """
        BaseFinetuning.make_trainable(modules)
        group_lr = float(lr) if lr is not None else optimizer.param_groups[0]["lr"] / initial_denom_lr
        params = BaseFinetuning.filter_on_optimizer(
            optimizer, BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        )
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    unfreeze_and_add_param_groups = unfreeze_and_add_param_group  # the plural some docs and ports use

    # ------------------------------------------------------------------ to override
    @abstractmethod
    def freeze_before_training(self, pl_module: Task) -> None:
        """Freeze what must not train at first (called in ``setup``, before ``configure_optimizers``)."""

    @abstractmethod
    def finetune_function(self, pl_module: Task, current_epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze what should train from ``current_epoch`` on (called at each epoch start, per optimizer).

        Both methods are abstract: a subclass that leaves one out cannot be built (a TypeError naming it).
        """

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        self._task = task
        self.freeze_before_training(task)

    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if self._restarting:
            self._restore_param_groups(trainer, task)
            self._restarting = False

    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        names = {id(p): name for name, p in task.named_parameters()}
        for index, optimizer in enumerate(trainer.optimizers):
            groups_before = len(optimizer.param_groups)
            self.finetune_function(task, trainer.current_epoch, optimizer)
            self._remember(index, optimizer.param_groups, groups_before, names)

    # ------------------------------------------------------------------ param groups by name
    def _remember(
        self, index: int, groups: list[dict[str, Any]], groups_before: int, names: Mapping[int, str]
    ) -> None:
        """Record ``index``'s groups the first time, then only the groups added since (by parameter name)."""
        if index not in self._internal_optimizer_metadata:
            self._internal_optimizer_metadata[index] = [_named_group(g, names) for g in groups]
        elif len(groups) != groups_before:
            self._internal_optimizer_metadata[index].extend(_named_group(g, names) for g in groups[groups_before:])

    def _restore_param_groups(self, trainer: TrainerView, task: Task) -> None:
        params = dict(task.named_parameters())
        for index, optimizer in enumerate(trainer.optimizers):
            saved = self._internal_optimizer_metadata.get(index)
            if saved is None:
                continue
            missing = [n for g in saved for n in g["params"] if n not in params]
            if missing:
                raise ConfigurationError(
                    f"{type(self).__name__}: the checkpoint's param groups name parameters this task does not "
                    f"have: {missing[:5]}"
                )
            optimizer.param_groups = [{**g, "params": [params[n] for n in g["params"]]} for g in saved]
        # freeze_before_training (setup) froze the backbone again in this process: make trainable exactly what was
        # trainable when the checkpoint was taken.
        if self._trainable is not None:
            for name, param in params.items():
                param.requires_grad_(name in self._trainable)


def _named_group(group: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, Any]:
    return {**{k: v for k, v in group.items() if k != "params"}, "params": [names[id(p)] for p in group["params"]]}


def multiplicative(epoch: int) -> float:
    """`BackboneFinetuning`'s default: the backbone's learning rate doubles every epoch."""
    return 2.0


class BackboneFinetuning(BaseFinetuning):
    """Train the task's ``backbone`` module from epoch ``unfreeze_backbone_at_epoch`` on, with a rising LR.

    Before training the backbone is frozen. At ``unfreeze_backbone_at_epoch`` it joins the optimizer as a new
    param group with learning rate ``backbone_initial_lr`` (default: the first group's LR times
    ``backbone_initial_ratio_lr``); at each later epoch its LR is multiplied by ``lambda_func(epoch + 1)``,
    capped at the first group's LR when ``should_align``.

    Args:
        unfreeze_backbone_at_epoch: the epoch (0-based) at which the backbone starts training.
        lambda_func: epoch -> factor applied to the backbone's LR at each following epoch.
        backbone_initial_ratio_lr: the backbone's first LR as a share of the first group's LR.
        backbone_initial_lr: the backbone's first LR (overrides the ratio).
        should_align: never let the backbone's LR exceed the first group's.
        initial_denom_lr: kept for Lightning's signature (the backbone's LR is always given explicitly).
        train_bn: BatchNorm layers of the backbone train while it is frozen.
        verbose: log the learning rates at each change.
        rounding: digits of the logged learning rates.

    Example:
        The task's ``configure_optimizers`` gives the optimizer only the parameters that train at first:

        >>> class Finetune(dltrain.Task):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.backbone = torch.nn.Linear(8, 8)  # pretrained, in a real task
        ...         self.head = torch.nn.Linear(8, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.head(self.backbone(x)), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)
        >>> finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 2.0)
        >>> trainer = dltrain.Trainer(max_epochs=3, callbacks=[finetuning], log_every_n_steps=1,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> model = Finetune()
        >>> trainer.fit(model, train_loader)
        >>> # the head's LR; the backbone's: 0.1 * 0.1 from epoch 1, doubled at epoch 2
        >>> [round(group["lr"], 6) for group in trainer.optimizers[0].param_groups]
        [0.1, 0.02]
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable[[int], float] = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict.get("previous_backbone_lr")
        super().load_state_dict(state_dict)

    @staticmethod
    def _backbone(task: Task) -> Module:
        backbone = getattr(task, "backbone", None)
        if not isinstance(backbone, Module):
            raise ConfigurationError(
                f"BackboneFinetuning needs the task to have a torch.nn.Module attribute `backbone`; "
                f"{type(task).__name__} has {'none' if backbone is None else type(backbone).__name__}"
            )
        return backbone

    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        self._backbone(task)
        super().setup(trainer, task, stage)

    @override
    def freeze_before_training(self, pl_module: Task) -> None:
        self.freeze(self._backbone(pl_module), train_bn=self.train_bn)

    @override
    def finetune_function(self, pl_module: Task, current_epoch: int, optimizer: Optimizer) -> None:
        main_lr = optimizer.param_groups[0]["lr"]
        if current_epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = (
                self.backbone_initial_lr
                if self.backbone_initial_lr is not None
                else main_lr * self.backbone_initial_ratio_lr
            )
            self.previous_backbone_lr = backbone_lr
            self.unfreeze_and_add_param_group(
                self._backbone(pl_module), optimizer, backbone_lr,
                initial_denom_lr=self.initial_denom_lr, train_bn=self.train_bn,
            )
        elif current_epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            backbone_lr = self.lambda_func(current_epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > main_lr:
                backbone_lr = main_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
            self.previous_backbone_lr = backbone_lr
        else:
            return
        if self.verbose:
            log.info(
                "epoch %d: lr %s, backbone lr %s",
                current_epoch, round(main_lr, self.rounding), round(backbone_lr, self.rounding),
            )
