"""`ModelSummary`: a table of the task's layers and parameter counts at the start of ``fit``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from dltrain.callbacks.base import Callback

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["ModelSummary", "summarize"]


class ModelSummary(Callback):
    """Print the task's layers (to ``max_depth``), their parameter counts, and the totals, on global rank zero.

    Added by default (``Trainer(enable_model_summary=False)`` leaves it out).

    Args:
        max_depth: how deep to list submodules (1: the task's direct children).
        file: where to print (default ``sys.stdout``).
    """

    def __init__(self, max_depth: int = 1, file: TextIO | None = None) -> None:
        self.max_depth = max_depth
        self.file = file

    def on_fit_start(self, trainer: Trainer, task: Task) -> None:
        if trainer.is_global_zero:
            print(summarize(task, self.max_depth), file=self.file or sys.stdout)


def summarize(task: Task, max_depth: int = 1) -> str:
    """The summary table as text: name, type, parameters and whether they train, then totals and size."""
    from torchmetrics import Metric

    rows = [("", "Name", "Type", "Params", "Mode")]
    for i, (name, module) in enumerate(
        (n, m) for n, m in task.named_modules() if n and n.count(".") < max_depth and not isinstance(m, Metric)
    ):
        count = sum(p.numel() for p in module.parameters())
        rows.append((str(i), name, type(module).__name__, _human(count), "train" if module.training else "eval"))
    params = list(task.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        "-" * len(lines[0]),
        f"{_human(trainable)} trainable params",
        f"{_human(total - trainable)} non-trainable params",
        f"{_human(total)} total params",
        f"{size_mb:.3f} total estimated model params size (MB)",
    ]
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
