"""`ModelPruning`: prune weights with ``torch.nn.utils.prune`` at epoch ends (Lightning's)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from copy import deepcopy
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune
from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["ModelPruning"]

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "ln_structured": prune.ln_structured, "l1_unstructured": prune.l1_unstructured,
    "random_structured": prune.random_structured, "random_unstructured": prune.random_unstructured,
}
_METHODS: dict[str, type[prune.BasePruningMethod]] = {
    "ln_structured": prune.LnStructured, "l1_unstructured": prune.L1Unstructured,
    "random_structured": prune.RandomStructured, "random_unstructured": prune.RandomUnstructured,
}


class ModelPruning(Callback):
    """Prune ``amount`` of the weights at the end of each training (or validation) epoch.

    Uses ``torch.nn.utils.prune``; optionally resets the weights left to their initial values (the lottery ticket
    hypothesis), and makes the pruning permanent at the end of training.

    Checkpoints hold the pruned weights as plain tensors (the mask applied, no ``*_orig``/``*_mask`` entries), so
    they load into the task as it is defined, as Lightning's.

    Args:
        pruning_fn: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``, ``"random_structured"``,
            or a function ``(module, name, amount)`` (a ``BasePruningMethod`` subclass with
            ``use_global_unstructured``).
        parameters_to_prune: ``(module, name)`` pairs (default: every ``weight``/``bias`` of every layer).
        parameter_names: the parameter names to prune when ``parameters_to_prune`` is not given.
        use_global_unstructured: rank the weights of every layer together (``prune.global_unstructured``).
        amount: a fraction or a number of weights, or a function of the epoch returning one.
        apply_pruning: whether to prune (or a function of the epoch returning it).
        make_pruning_permanent: remove the reparametrisation at the end of training.
        use_lottery_ticket_hypothesis: reset the remaining weights to their values at the start (or a function of
            the epoch); with ``resample_parameters`` to new random values instead.
        pruning_dim: ``dim`` of the structured methods.
        pruning_norm: ``n`` of ``ln_structured``.
        verbose: 1 prints the sparsity after each pruning, 2 per layer too.
        prune_on_train_epoch_end: prune at the end of the training epoch (``False``: of the validation epoch).

    Example:
        >>> pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(task.net, "weight")], amount=0.5)
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[pruning], logger=False, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)
        >>> int((task.net.weight == 0).sum())  # half of the 8 weights
        4
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: Callable[..., Any] | str,
        parameters_to_prune: Sequence[tuple[nn.Module, str]] = (),
        parameter_names: list[str] | None = None,
        use_global_unstructured: bool = True,
        amount: int | float | Callable[[int], int | float] = 0.5,
        apply_pruning: bool | Callable[[int], bool] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
        resample_parameters: bool = False,
        pruning_dim: int | None = None,
        pruning_norm: int | None = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        self._parameter_names = list(parameter_names or self.PARAMETER_NAMES)
        unknown = [n for n in self._parameter_names if n not in self.PARAMETER_NAMES]
        if unknown:
            raise ConfigurationError(f"ModelPruning(parameter_names={unknown}): use names of {self.PARAMETER_NAMES}")
        if verbose not in (0, 1, 2):
            raise ConfigurationError(f"ModelPruning(verbose={verbose}): use 0, 1 or 2")
        kwargs: dict[str, Any] = {}
        if pruning_dim is not None:
            kwargs["dim"] = pruning_dim
        if pruning_norm is not None:
            kwargs["n"] = pruning_norm
        self._global = use_global_unstructured
        if isinstance(pruning_fn, str):
            name = pruning_fn.lower()
            if name not in _FUNCTIONS:
                raise ConfigurationError(f"ModelPruning(pruning_fn={pruning_fn!r}): use one of {sorted(_FUNCTIONS)}")
            if name.endswith("_structured"):
                if pruning_dim is None:
                    raise ConfigurationError(f"ModelPruning(pruning_fn={pruning_fn!r}) needs pruning_dim")
                if name == "ln_structured" and pruning_norm is None:
                    raise ConfigurationError("ModelPruning(pruning_fn='ln_structured') needs pruning_norm")
                self._global = False  # structured pruning is per layer
            self.pruning_fn: Any = _METHODS[name] if self._global else partial(_FUNCTIONS[name], **kwargs)
        elif callable(pruning_fn):
            if self._global and not (inspect.isclass(pruning_fn) and issubclass(pruning_fn, prune.BasePruningMethod)):
                raise ConfigurationError("ModelPruning(use_global_unstructured=True) needs pruning_fn to be a "
                                         "torch.nn.utils.prune.BasePruningMethod subclass")
            self.pruning_fn = pruning_fn
        else:
            raise ConfigurationError(f"ModelPruning(pruning_fn={pruning_fn!r}): a name or a function")
        self._global_kwargs = kwargs
        self._given = list(parameters_to_prune)
        self._parameters_to_prune: list[tuple[nn.Module, str]] = []
        self.amount = amount
        self._apply_pruning = apply_pruning
        self._make_permanent = make_pruning_permanent
        self._lottery = use_lottery_ticket_hypothesis
        self._resample = resample_parameters
        self._verbose = verbose
        self._on_train_epoch_end = prune_on_train_epoch_end
        self._originals: list[tuple[int, nn.Module, str]] = []  # (index, copy of the layer at the start, name)

    def filter_parameters_to_prune(self, parameters_to_prune: Sequence[tuple[nn.Module, str]] = ()) -> list[
            tuple[nn.Module, str]]:
        """Override to choose among the parameters to prune."""
        return list(parameters_to_prune)

    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if stage != "fit":
            return
        from dltrain.task import Task

        containers = (Task, nn.Sequential, nn.ModuleList, nn.ModuleDict)
        pairs = self._given or [(m, n) for m in task.modules() if not isinstance(m, containers)
                                for n in self._parameter_names if isinstance(getattr(m, n, None), nn.Parameter)]
        self._parameters_to_prune = self.filter_parameters_to_prune(pairs)
        copies: dict[int, nn.Module] = {}
        self._originals = []
        if self._lottery:
            for i, (module, name) in enumerate(self._parameters_to_prune):
                copy = copies.setdefault(id(module), deepcopy(module))
                self._originals.append((i, copy, name))

    def apply_pruning(self, amount: int | float) -> None:
        """Prune ``amount`` (a fraction, or a number of weights) of the parameters now."""
        before = [self._sparsity(m, n) for m, n in self._parameters_to_prune]
        if self._global:
            params = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            kwargs = {k: v for k, v in {**self._global_kwargs, "amount": amount}.items() if k in params}
            prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn, **kwargs)
        else:
            for module, name in self._parameters_to_prune:
                self.pruning_fn(module, name=name, amount=amount)
        if self._verbose:
            after = [self._sparsity(m, n) for m, n in self._parameters_to_prune]
            total = sum(t for _, t in after)
            print(f"[dltrain] ModelPruning amount={amount}: pruned {sum(z for z, _ in before)}/{total} -> "
                  f"{sum(z for z, _ in after)}/{total}", file=sys.stderr)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the weights left unpruned to their values before training (or resample them)."""
        resampled: dict[int, nn.Module] = {}
        for i, copy, name in self._originals:
            source = copy
            if self._resample and callable(getattr(copy, "reset_parameters", None)):
                if id(copy) not in resampled:  # one fresh draw per layer (the copy itself stays the original)
                    fresh = deepcopy(copy)
                    fresh.reset_parameters()  # type: ignore[operator]
                    resampled[id(copy)] = fresh
                source = resampled[id(copy)]
            module, _ = self._parameters_to_prune[i]
            target = getattr(module, f"{name}_orig", None)
            target = target if target is not None else getattr(module, name)
            target.data = getattr(source, name).data.to(target.device)

    @staticmethod
    def _sparsity(module: nn.Module, name: str) -> tuple[int, int]:
        mask = getattr(module, f"{name}_mask", None)
        return (int((mask == 0).sum()), mask.numel()) if mask is not None else (0, getattr(module, name).numel())

    def _run(self, epoch: int) -> None:
        do = self._apply_pruning(epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(epoch) if callable(self.amount) else self.amount
        if not do or not amount:
            return
        self.apply_pruning(amount)
        if self._lottery(epoch) if callable(self._lottery) else self._lottery:
            self.apply_lottery_ticket_hypothesis()

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if self._on_train_epoch_end:
            self._run(trainer.current_epoch)

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if not trainer.sanity_checking and not self._on_train_epoch_end:
            self._run(trainer.current_epoch)

    @override
    def on_train_end(self, trainer: TrainerView, task: Task) -> None:
        if self._make_permanent:
            self.make_pruning_permanent(task)

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Remove the pruning reparametrisation: the weights become plain parameters with zeros where pruned."""
        for m in module.modules():
            # A pruned parameter `name` is `name_orig` (a parameter) times `name_mask` (a buffer); prune.remove
            # takes the pruning method's forward pre-hook off and makes `name` a parameter again.
            buffers = dict(m.named_buffers(recurse=False))
            for key, _ in list(m.named_parameters(recurse=False)):
                if key.endswith("_orig") and f"{key[:-5]}_mask" in buffers:
                    prune.remove(m, key[:-5])

    @override
    def on_save_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if not self._make_permanent or not isinstance(state, dict):
            return
        pruned = {}
        for key, value in state.items():
            if key.endswith("_orig") and f"{key[:-5]}_mask" in state:
                pruned[key[:-5]] = (value * state[f"{key[:-5]}_mask"]).detach().to(torch.device("cpu"))
            elif not (key.endswith("_mask") and f"{key[:-5]}_orig" in state):
                pruned[key] = value
        checkpoint["state_dict"] = pruned
