"""Worker-side building blocks shared by the runners: clocks, models, the dltrain/Lightning tasks and timers."""

from __future__ import annotations

import contextlib
import itertools
import resource
import statistics
import time
from typing import Any

_PERF = time.perf_counter
_CPU = time.process_time  # CPU seconds of the whole worker process (all its threads)


def _threads() -> None:
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_model(kind: str, cfg: dict[str, Any]) -> Any:
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(cfg["in_dim"], cfg["hidden"]), nn.ReLU(), nn.Linear(cfg["hidden"], cfg["classes"])
        )
    if kind == "cnn":
        return MnistNet()
    if kind == "tiny":
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10))
    raise ValueError(kind)


def make_optimizer(kind: str, params: Any) -> Any:
    import torch

    if kind == "cnn":
        return torch.optim.Adadelta(params, lr=1.0)  # as pytorch/examples/mnist
    return torch.optim.SGD(params, lr=0.05)


def loss_fn(kind: str) -> Any:
    import torch.nn.functional as F

    return F.nll_loss if kind == "cnn" else F.cross_entropy


def _mnist_net_cls() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        """pytorch/examples mnist/main.py."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x: Any) -> Any:
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = self.dropout2(x)
            return F.log_softmax(self.fc2(x), dim=1)

    return Net


def MnistNet() -> Any:
    return _mnist_net_cls()()


_CLASSES: dict[str, Any] = {}


def dl_task_cls() -> Any:
    """A dltrain Task around make_model(kind); logs the loss every step (a typical task)."""
    if "dl_task" not in _CLASSES:
        import dltrain

        class BenchTask(dltrain.Task):
            def __init__(self, kind: str, cfg: dict[str, Any]) -> None:
                super().__init__()
                self.kind = kind
                self.net = make_model(kind, cfg)
                self._loss = loss_fn(kind)

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                x, y = batch
                loss = self._loss(self.net(x), y)
                self.log("train/loss", loss)
                return loss

            def configure_optimizers(self) -> Any:
                return make_optimizer(self.kind, self.parameters())

        class Timer(dltrain.Callback):
            def __init__(self, stop_at_first: bool = False) -> None:
                self.first: Any = None
                self.ends: list[tuple[float, float]] = []
                self.n = 0
                self.first_step = -1
                self.first_idx = -1
                self.stop_at_first = stop_at_first

            def on_train_batch_start(self, trainer: Any, task: Any, batch: Any, batch_idx: int) -> None:
                if self.first is None:
                    self.first = (_PERF(), _CPU())
                    self.first_step = trainer.global_step
                    self.first_idx = batch_idx
                    if self.stop_at_first:
                        trainer.should_stop = True

            def on_train_batch_end(self, trainer: Any, task: Any, out: Any, batch: Any, batch_idx: int) -> None:
                self.ends.append((_PERF(), _CPU()))
                self.n += 1

        class SaveAt(dltrain.Callback):
            def __init__(self, step: int, path: str) -> None:
                self.step, self.path = step, path

            def on_train_batch_end(self, trainer: Any, task: Any, out: Any, batch: Any, batch_idx: int) -> None:
                if trainer.global_step == self.step:
                    trainer.save_checkpoint(self.path)
                    trainer.should_stop = True

        _CLASSES.update(dl_task=BenchTask, dl_timer=Timer, dl_saveat=SaveAt)
    return _CLASSES["dl_task"]


def pl_classes() -> tuple[Any, Any]:
    if "pl_task" not in _CLASSES:
        import lightning.pytorch as pl

        class LitTask(pl.LightningModule):
            def __init__(self, kind: str, cfg: dict[str, Any]) -> None:
                super().__init__()
                self.kind = kind
                self.net = make_model(kind, cfg)
                self._loss = loss_fn(kind)

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                x, y = batch
                loss = self._loss(self.net(x), y)
                self.log("train/loss", loss)
                return loss

            def configure_optimizers(self) -> Any:
                return make_optimizer(self.kind, self.parameters())

        class PlTimer(pl.Callback):
            def __init__(self) -> None:
                self.first: Any = None
                self.ends: list[tuple[float, float]] = []
                self.n = 0

            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                if self.first is None:
                    self.first = (_PERF(), _CPU())

            def on_train_batch_end(self, trainer: Any, pl_module: Any, out: Any, batch: Any, batch_idx: int) -> None:
                self.ends.append((_PERF(), _CPU()))
                self.n += 1

        _CLASSES.update(pl_task=LitTask, pl_timer=PlTimer)
    return _CLASSES["pl_task"], _CLASSES["pl_timer"]


def _times(t0: float, c0: float, t1: float, c1: float, first: Any, ends: list[tuple[float, float]],
           n: int) -> dict[str, Any]:
    """Wall (t_) and CPU (c_) seconds of the whole fit and of the loop (first batch start to last batch end), and
    the median step: the median over steps of (end of step i) - (end of step i-1), i.e. data fetch + hooks +
    compute of one step. A step that was preempted or slowed by a neighbour is an outlier the median ignores."""
    walls = [first[0]] + [e[0] for e in ends]
    cpus = [first[1]] + [e[1] for e in ends]
    dw = [b - a for a, b in itertools.pairwise(walls)]
    dc = [b - a for a, b in itertools.pairwise(cpus)]
    return {"t_fit": t1 - t0, "c_fit": c1 - c0, "t_loop": ends[-1][0] - first[0], "c_loop": ends[-1][1] - first[1],
            "t_step_med": statistics.median(dw), "c_step_med": statistics.median(dc),
            # The 10th percentile: on a shared VM the median of one run moves by tens of percent between rounds
            # (other guests), the fast steps far less (scripts/loop_quantiles.py).
            "c_step_p10": sorted(dc)[len(dc) // 10], "steps": n}


def make_dl_trainer(notes: list[str], **kwargs: Any) -> Any:
    """dltrain.Trainer with its defaults; if the default progress bar cannot be built, without it (noted)."""
    import dltrain

    try:
        return dltrain.Trainer(**kwargs)
    except ImportError as err:
        if kwargs.get("enable_progress_bar") is False:
            raise
        note = f"dltrain default Trainer failed ({type(err).__name__}: {err}); ran with enable_progress_bar=False"
        if note not in notes:
            notes.append(note)
        return dltrain.Trainer(enable_progress_bar=False, **kwargs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    try:
        return float(obj)
    except Exception:
        return repr(obj)
