"""What a training step returned: the loss inside it, whether it is finite, and DDP's unused-parameter error."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dltrain.errors import StepError

if TYPE_CHECKING:
    from dltrain._engine import Engine
    from dltrain._run_state import LoopState


def loss_of(output: Any, batch_idx: int) -> Tensor | None:
    """The loss in ``training_step``'s output (a scalar tensor or ``{"loss": ...}``); ``None`` skips the batch."""
    if output is None:
        return None
    loss = output
    if type(output) is not Tensor and isinstance(output, Mapping):  # a Tensor first: no ABC check per step
        if "loss" not in output:
            raise StepError(
                f"training_step returned a dict without a 'loss' entry on batch {batch_idx} (keys: "
                f"{sorted(output)}); return {{'loss': loss, ...}}, a scalar tensor, or None to skip the batch"
            )
        loss = output["loss"]
    if not isinstance(loss, Tensor):
        raise StepError(
            f"training_step returned {type(loss).__name__} on batch {batch_idx}; return a scalar loss tensor, "
            "a dict with 'loss', or None to skip the batch"
        )
    if loss.ndim != 0 and loss.numel() != 1:
        raise StepError(
            f"training_step returned a loss of shape {tuple(loss.shape)} on batch {batch_idx}; the loss must be "
            "a scalar (reduce it, e.g. loss.mean())"
        )
    if not loss.requires_grad:
        raise StepError(
            f"the loss returned on batch {batch_idx} does not require grad (it was computed without the "
            "model's parameters, under torch.no_grad(), or detached)"
        )
    return loss


def check_nonfinite(value: float, policy: str, rank: int, progress: LoopState, batch_idx: int | None,
                    step: int | None = None) -> bool:
    """Whether to skip the step: ``False`` for a finite loss, ``True`` for a bad one under ``policy="skip"``.

    Raises:
        StepError: a bad loss with ``on_nonfinite_loss="raise"``, naming the step, epoch, batch and rank (``step``
            is given when the bad loss is found later, at a logging step, on an accelerator).
    """
    if math.isfinite(value):
        return False
    if policy == "skip":
        return True
    advice = ("Lower the learning rate, clip gradients (gradient_clip_val), check the data, or pass "
              "Trainer(on_nonfinite_loss='skip').")
    if step is not None:
        raise StepError(f"the loss became NaN or infinite at global step {step} (rank {rank}). {advice}")
    raise StepError(
        f"the loss is {value} at global step {progress.global_step} (epoch {progress.epoch}, batch "
        f"{batch_idx}, rank {rank}). {advice}"
    )


class NonfiniteLosses:
    """The non-finite loss check, as cheap as the device allows.

    On the CPU the loss is read every step (``.item()`` on a CPU scalar costs under a microsecond). On an
    accelerator the losses are kept (no kernel, no sync) and looked at when logging, or every 4096 batches so
    that memory stays bounded, unless skipping bad steps was asked for: that needs the answer before the step.
    """

    def __init__(self, policy: str, engine: Engine, progress: LoopState) -> None:
        self.policy = policy  # on_nonfinite_loss
        self.engine = engine
        self.progress = progress
        self._losses: list[Tensor] = []
        self._steps: list[int] = []

    @property
    def skipped(self) -> int:
        return self.progress.skipped_nonfinite_steps

    def skip(self, loss: Tensor, batch_idx: int) -> bool:
        """Whether to skip this step's backward (see `check_nonfinite`)."""
        if self.engine.check_loss_on_host:
            value = loss.item()  # a CPU .item() costs under a microsecond
            if math.isfinite(value):
                return False
            skip = check_nonfinite(value, self.policy, self.engine.global_rank, self.progress, batch_idx)
            self.progress.skipped_nonfinite_steps += skip
            return skip
        self._losses.append(loss.detach())
        self._steps.append(self.progress.global_step)
        if len(self._losses) >= 4096:
            self.check()
        return False

    def check(self) -> None:
        """Raise for the first bad loss kept on the device since the last check."""
        if self._losses:
            losses, steps = torch.stack(self._losses).float(), self._steps
            self._losses, self._steps = [], []
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                check_nonfinite(math.nan, self.policy, self.engine.global_rank, self.progress, None,
                                step=steps[int((~finite).nonzero()[0, 0])])


def raise_if_unused_parameters(err: BaseException) -> None:
    """DDP reports parameters without a gradient at the next forward, in terms of its own arguments: say it plainly."""
    if "find_unused_parameters" in str(err) or "did not receive grad" in str(err):
        raise StepError(
            "some parameters got no gradient in the previous step, which DDP does not allow by default (looking "
            "for them costs speed). Use them in the loss, freeze them (requires_grad=False), or pass "
            "strategy='ddp_find_unused_parameters_true' (or DDPStrategy(find_unused_parameters=True)). "
            f"Original error: {str(err)[:300]}"
        ) from err


def add_note(err: BaseException, note: str) -> None:
    """PEP 678's ``add_note`` (Python 3.11+); on 3.10 the note is kept in ``__notes__`` all the same."""
    if hasattr(err, "add_note"):
        err.add_note(note)
    else:  # pragma: no cover - Python 3.10
        err.__notes__ = [*getattr(err, "__notes__", []), note]  # type: ignore[attr-defined]
