"""`ModelSummary`: a table of the task's layers and parameter counts at the start of ``fit``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from typing_extensions import override

from dltrain.callbacks.base import Callback

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["ModelSummary", "summarize"]


class ModelSummary(Callback):
    """Print the task's layers (to ``max_depth``), their parameter counts, and the totals, on global rank zero.

    Added by default (``Trainer(enable_model_summary=False)`` leaves it out).

    With ``task.example_input_array`` set, the table also has each layer's input and output sizes (one forward
    pass on that input, in ``eval()`` mode without gradients), as Lightning's.

    Args:
        max_depth: how deep to list submodules (1: the task's direct children).
        file: where to print (default ``sys.stdout``).
        **summarize_kwargs: Lightning's extra summary options; none changes dltrain's table.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[ModelSummary(max_depth=2, file=out)],
        ...                           log_every_n_steps=2, enable_progress_bar=False)
        >>> trainer.fit(task, train_loader, val_loader)
        >>> print(out.getvalue())
          | Name | Type   | Params | Mode
        ----------------------------------
        0 | net  | Linear | 9      | train
        ----------------------------------
        9 trainable params
        0 non-trainable params
        9 total params
        0.000 total estimated model params size (MB)
    """

    def __init__(self, max_depth: int = 1, file: TextIO | None = None, **summarize_kwargs: Any) -> None:
        self.max_depth = max_depth
        self.file = file
        self.summarize_kwargs = summarize_kwargs

    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if trainer.is_global_zero:
            print(summarize(task, self.max_depth), file=self.file or sys.stdout)


def summary_rows(task: Task, max_depth: int = 1) -> tuple[list[tuple[str, ...]], list[str]]:
    """The table (a header row, then one row per layer down to ``max_depth``) and the lines of totals.

    Columns: index, name, type, parameters, mode, and with ``task.example_input_array`` set the input and output
    sizes of each layer in one forward pass on it.
    """
    from torchmetrics import Metric

    modules = [(n, m) for n, m in task.named_modules() if n and n.count(".") < max_depth and not isinstance(m, Metric)]
    sizes = _in_out_sizes(task, modules) if task.example_input_array is not None else None
    header: tuple[str, ...] = ("", "Name", "Type", "Params", "Mode")
    rows = [header + (("In sizes", "Out sizes") if sizes is not None else ())]
    for i, (name, module) in enumerate(modules):
        count = sum(p.numel() for p in module.parameters())
        row: tuple[str, ...] = (str(i), name, type(module).__name__, _human(count),
                                "train" if module.training else "eval")
        if sizes is not None:
            row += sizes.get(name, ("?", "?"))
        rows.append(row)
    params = list(task.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    totals = [
        f"{_human(trainable)} trainable params",
        f"{_human(total - trainable)} non-trainable params",
        f"{_human(total)} total params",
        f"{size_mb:.3f} total estimated model params size (MB)",
    ]
    return rows, totals


def summarize(task: Task, max_depth: int = 1) -> str:
    """The summary table as text: one row per layer, then the totals and the size.

    A row holds the name, type, parameters and whether they train (and in/out sizes with an
    ``example_input_array``).
    """
    rows, totals = summary_rows(task, max_depth)
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += ["-" * len(lines[0]), *totals]
    return "\n".join(lines)


def _in_out_sizes(task: Task, modules: list[tuple[str, Any]]) -> dict[str, tuple[str, str]]:
    """Each listed layer's input and output sizes in one forward pass on ``example_input_array``."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    sizes: dict[str, tuple[str, str]] = {}

    def record(name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            sizes[name] = (_size_of(inputs[0] if len(inputs) == 1 else list(inputs)), _size_of(output))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules]
    example = move_data_to_device(task.example_input_array, task.device)
    mode = task.training
    task.eval()
    try:
        with torch.no_grad():
            if isinstance(example, (list, tuple)):
                task(*example)
            elif isinstance(example, dict):
                task(**example)
            else:
                task(example)
    finally:
        task.train(mode)
        for handle in handles:
            handle.remove()
    return sizes


def _size_of(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return str(list(shape))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_size_of(v) for v in value) + "]"
    return "?"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
