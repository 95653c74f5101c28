"""A ready image-classification task: any torchvision model by name or your own ``nn.Module``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from dltrain.data.domain import STAGES
from dltrain.errors import CheckpointError, ConfigurationError
from dltrain.plugins.metrics import accuracy
from dltrain.plugins.vision.device import device_transform
from dltrain.task import Task

__all__ = ["ImageClassificationTask", "accuracy", "build_model", "load_weights"]


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A torchvision classification model by name, randomly initialised (weights are never downloaded).

    Example:
        >>> build_model("resnet18", num_classes=10).fc.out_features
        10
    """
    import torchvision.models

    if name not in torchvision.models.list_models():
        raise ConfigurationError(
            f"unknown torchvision model {name!r}; see torchvision.models.list_models(), "
            "e.g. resnet18, resnet50, mobilenet_v3_small, efficientnet_b0, vit_b_16, convnext_tiny"
        )
    return torchvision.models.get_model(name, num_classes=num_classes, weights=None, **kwargs)


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local state dict into ``model``; tensors whose shape differs (a new classifier head) are skipped.

    Accepts a bare state dict, a dltrain/Lightning checkpoint (``"state_dict"``) or ``{"model": ...}``; a
    ``"model."`` or ``"module."`` prefix on every key is removed. Loaded with ``weights_only=True``.

    Returns:
        The names of the parameters left at their initial values (skipped for their shape).

    Raises:
        CheckpointError: the file is missing or unreadable, or its keys do not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist (weights are only read from local files)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read weights file {str(path)!r}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    kept = {k: v for k, v in state.items() if k not in skipped}
    result = model.load_state_dict(kept, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"weights file {str(path)!r} does not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )
    if skipped:
        warnings.warn(
            f"weights from {str(path)!r}: {len(skipped)} tensors have another shape and were left as initialised "
            f"(a classifier head for another number of classes?): {skipped[:4]}",
            stacklevel=2,
        )
    return skipped


class ImageClassificationTask(Task):
    """Image classification with cross-entropy, optional MixUp/CutMix on the device, top-1/top-5 accuracy.

    Batches are ``(images (B, C, H, W) float, labels (B,) int64)``, as made by the vision plugin's transforms and
    ``collate``, or with ``decode="cuda"`` the plugin's ``(EncodedJpegs, labels)``. ``on_after_batch_transfer``
    runs the plugin's ``device_transform`` for the current stage (JPEG decoding and the image pipeline with
    ``decode="cuda"``, MixUp/CutMix in training). Logs ``train/loss`` and ``train/acc`` (without mixing) per step and per
    epoch (``_step``/``_epoch`` suffixes), ``val/loss``, ``val/acc``, ``val/acc_top5`` (and ``test/...``).

    Args:
        model: a torchvision model name (``"resnet18"``) built with ``num_classes`` outputs, or any ``nn.Module``
            mapping images to logits.
        num_classes: number of classes.
        label_smoothing: cross-entropy label smoothing.
        lr: peak learning rate.
        optimizer: ``"sgd"`` (momentum, nesterov) or ``"adamw"``.
        momentum: SGD momentum.
        weight_decay: applied to weights only, not to biases and norm parameters.
        scheduler: ``"cosine"`` (linear warmup then cosine to 0, per step) or ``"none"``.
        warmup_steps: linear warmup length in optimizer steps.
        total_steps: length of the cosine schedule; default: the Trainer's estimate (``max_steps``, or epochs times
            batches per epoch).
        mixup_alpha: MixUp strength during training (0 disables it), see ``MixUpCutMix``.
        cutmix_alpha: CutMix strength during training (0 disables it).
        mix_prob: probability of mixing a batch.
        decode: ``"cpu"`` (the loader's workers decode) or ``"cuda"`` (batches of JPEG bytes from a loader with
            ``options={"decode": "cuda", ...}``, decoded on the batch's device).
        image_options: with ``decode="cuda"``, the image pipeline options the loader's transform would otherwise
            take (``size``, ``resize``, ``scale``, ``mean``, ...); give the loader and the task the same ones.
        weights_path: a local file of pretrained weights (never downloaded); a head of another shape is skipped.
        top_k: the top-k accuracies to report (those above ``num_classes`` are dropped).
        model_kwargs: extra arguments for ``torchvision.models.get_model``.

    Example:
        >>> task = ImageClassificationTask("resnet18", num_classes=10, optimizer="adamw", lr=1e-3)
        >>> task(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        model: str | nn.Module = "resnet18",
        num_classes: int = 1000,
        *,
        label_smoothing: float = 0.0,
        lr: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        warmup_steps: int = 0,
        total_steps: int | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        decode: str = "cpu",
        image_options: Mapping[str, Any] | None = None,
        weights_path: str | Path | None = None,
        top_k: Sequence[int] = (1, 5),
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=("model",))
        self.save_hyperparameters(model=model if isinstance(model, str) else type(model).__name__)
        if num_classes < 1:
            raise ConfigurationError(f"num_classes must be positive, got {num_classes}")
        if optimizer not in ("sgd", "adamw"):
            raise ConfigurationError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
        if scheduler not in ("cosine", "none"):
            raise ConfigurationError(f"scheduler must be 'cosine' or 'none', not {scheduler!r}")
        self.model = build_model(model, num_classes, **(model_kwargs or {})) if isinstance(model, str) else model
        if not isinstance(self.model, nn.Module):
            raise ConfigurationError(f"model must be a torchvision model name or an nn.Module, not {type(model)}")
        if weights_path is not None:
            load_weights(self.model, weights_path)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.lr = lr
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.scheduler_name = scheduler
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        # The plugin's device transforms, one per stage (a plain dict: they hold no weights, so no state_dict keys).
        mixing = {"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha} if mix_prob > 0 else {}
        self.device_transforms: dict[str, nn.Module | None] = {
            stage: device_transform(stage, num_classes=num_classes, prob=mix_prob, label_smoothing=label_smoothing,
                                    decode=decode, **mixing, **(image_options or {}))
            for stage in STAGES
        }
        self.top_k = sorted({k for k in top_k if 1 <= k <= num_classes})
        # One metric object per split and k: their states are separate and each is reset at its epoch end.
        self.val_acc = nn.ModuleDict({str(k): accuracy(num_classes, k) for k in self.top_k})
        self.test_acc = nn.ModuleDict({str(k): accuracy(num_classes, k) for k in self.top_k})

    @override
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """The plugin's device transform for the current stage.

        Decoding (``decode="cuda"``), and MixUp/CutMix in training, which turns the labels into ``(B,
        num_classes)`` targets. A ``None`` batch stays ``None``.
        """
        transform = self.device_transforms[self._stage()]
        return batch if transform is None or batch is None else transform(batch)

    def _stage(self) -> str:
        """``"train"`` while training, else the evaluation stage the Trainer runs (``"val"`` within ``fit``)."""
        if self.training:
            return "train"
        stage = getattr(self._trainer, "stage", None)
        return stage if stage in ("test", "predict") else "val"

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits = self(images)
        if targets.ndim == 2:  # soft targets from MixUp/CutMix, already smoothed
            loss = F.cross_entropy(logits, targets)
        else:
            loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
            self.log("train/acc", (logits.argmax(-1) == targets).float().mean(), prog_bar=True, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], split: str, metrics: nn.ModuleDict) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{split}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        for k, module in metrics.items():
            metric: MulticlassAccuracy = module  # type: ignore[assignment]
            metric.update(logits, labels)
            self.log(f"{split}/acc" if k == "1" else f"{split}/acc_top{k}", metric, prog_bar=k == "1")

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(-1)

    def _schedule_length(self) -> int | None:
        if self.total_steps is not None:
            return self.total_steps
        trainer = self._trainer
        estimate = getattr(trainer, "estimated_stepping_batches", None)
        if isinstance(estimate, (int, float)) and math.isfinite(estimate) and estimate > 0:
            return int(estimate)
        max_steps = getattr(trainer, "max_steps", None)
        if isinstance(max_steps, int) and max_steps > 0:
            return max_steps
        return None

    @override
    def configure_optimizers(self) -> Any:
        # No weight decay on biases and norm scales: decaying them only hurts (standard practice since Goyal 2017).
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt: torch.optim.Optimizer
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr)
        if self.scheduler_name == "none" and self.warmup_steps == 0:
            return opt
        warmup = self.warmup_steps
        cosine = self.scheduler_name == "cosine"
        known: list[int] = []  # the schedule length, found lazily
        warned: list[bool] = []

        def factor(step: int) -> float:
            # Called at every scheduler step. The length is looked up lazily because the Trainer may call
            # configure_optimizers before it knows how many batches an epoch has.
            if warmup and step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            if not known:
                total = self._schedule_length()
                if total is None:
                    if step > 0 and not warned:
                        warned.append(True)
                        warnings.warn("ImageClassificationTask: the number of training steps is unknown, so the "
                                      "learning rate stays constant; pass total_steps= or Trainer(max_steps=)",
                                      stacklevel=2)
                    return 1.0
                known.append(total)
            progress = min((step - warmup) / max(known[0] - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
