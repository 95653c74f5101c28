"""`FakeTrainer`: a stand-in for the Trainer in callback unit tests, typed against `dltrain.callbacks.TrainerView`.

It has every member of the view, as plain attributes a test sets (``FakeTrainer(global_step=3)``, or
``trainer.current_epoch = 2`` as the test goes). mypy checks it against the Protocol (pyproject's ``[tool.mypy]
files`` lists this module and the tests that use it): a view member added, renamed or retyped without the fake
following fails the type check, and ``tests/test_layers.py`` checks the same at run time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dltrain._async_checkpoint import AsyncSave
from dltrain._optim import SchedulerConfig
from dltrain.callbacks.base import Callback, TrainerView
from dltrain.loggers.base import Logger
from dltrain.loop import LoopState


@dataclass
class FakeTrainer:
    """Every member of `TrainerView`, with the values of a fresh single-process fit."""

    loop_state: LoopState = field(default_factory=LoopState)
    global_step: int = 0
    current_epoch: int = 0
    should_stop: bool = False
    stage: str | None = "fit"
    is_last_batch: bool = False
    sanity_checking: bool = False
    interrupted: bool = False
    datamodule: Any = None
    num_training_batches: float = float("inf")
    num_val_batches: list[float] = field(default_factory=list)
    num_test_batches: list[float] = field(default_factory=list)
    num_predict_batches: list[float] = field(default_factory=list)
    train_dataloader: Any = None
    val_dataloaders: Any = None
    test_dataloaders: Any = None
    predict_dataloaders: Any = None
    callback_metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    logged_metrics: dict[str, float] = field(default_factory=dict)
    progress_bar_metrics: dict[str, float] = field(default_factory=dict)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    lr_scheduler_configs: list[SchedulerConfig] = field(default_factory=list)
    estimated_stepping_batches: float = float("inf")
    max_epochs: int | None = None
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    val_check_interval: int | float | None = None
    check_val_every_n_epoch: int | None = 1
    default_root_dir: str = "runs"
    precision: str = "32-true"
    world_size: int = 1
    global_rank: int = 0
    local_rank: int = 0
    is_global_zero: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    strategy: Any = None  # a lightning.fabric Strategy in the real view
    fabric: Any = None
    data_parallel_rank: int = 0
    data_parallel_size: int = 1
    data_parallel_group: Any = None
    fault_tolerance: Any = None
    tensor_parallel_rank: int = 0
    loggers: list[Logger] = field(default_factory=list)
    logger: Logger | None = None
    callbacks: list[Callback] = field(default_factory=list)
    checkpoint_callback: Any = None
    profiler: Any = None
    log_dir: str = "runs"
    saved: list[str] = field(default_factory=list)  # what save_checkpoint was asked to write

    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False,
                        storage_options: dict[str, Any] | None = None, *, background: AsyncSave | None = None,
                        after: Callable[[], None] | None = None) -> None:
        self.saved.append(str(filepath))
        if after is not None:  # the checkpoint is "complete" at once
            after()


def view_members() -> set[str]:
    """The names `TrainerView` declares (for the run-time check that the Trainer and the fake have them all)."""
    return {name for name in (*vars(TrainerView), *TrainerView.__annotations__) if not name.startswith("_")}


_IS_A_VIEW: TrainerView = FakeTrainer()  # the type check: mypy fails here when the fake and the view differ
