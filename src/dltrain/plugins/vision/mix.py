"""MixUp and CutMix as a batch transform that runs on the device (after the batch transfer)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dltrain.errors import ConfigurationError

__all__ = ["MixUpCutMix", "one_hot_targets"]


def one_hot_targets(labels: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """``(B,)`` class indices -> ``(B, num_classes)`` float targets, optionally label-smoothed."""
    off = label_smoothing / num_classes
    return F.one_hot(labels.long(), num_classes).float() * (1.0 - label_smoothing) + off


class MixUpCutMix(nn.Module):
    """Mix each batch with its reverse: MixUp (blend) or CutMix (paste a box); returns soft targets.

    One mixing coefficient per batch, drawn from ``Beta(alpha, alpha)`` with the global torch RNG (so it follows
    ``seed_everything``); the images never leave the device. Pairing sample ``i`` with ``B-1-i`` (a flip of the
    batch) needs no random permutation on the device and is as good as one, since batches are already shuffled.

    Args:
        num_classes: number of classes of the targets.
        mixup_alpha: Beta parameter of MixUp; 0 disables it.
        cutmix_alpha: Beta parameter of CutMix; 0 disables it.
        prob: probability of mixing a batch at all.
        switch_prob: with both enabled, probability of CutMix rather than MixUp.
        label_smoothing: applied to the one-hot targets before mixing.

    Example:
        >>> mix = MixUpCutMix(10, mixup_alpha=0.2, cutmix_alpha=1.0)
        >>> x, y = mix(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> x.shape, y.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]))
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigurationError(f"num_classes must be positive, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigurationError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ConfigurationError(f"prob and switch_prob must lie in [0, 1], got {prob}, {switch_prob}")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def _beta(self, alpha: float) -> float:
        a = torch.tensor([alpha], dtype=torch.float64)
        return float(torch.distributions.Beta(a, a).sample().item())  # CPU scalar: no device sync

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mix ``images`` ``(B, C, H, W)``; ``labels`` are ``(B,)`` indices or ``(B, num_classes)`` soft targets."""
        if images.ndim != 4:
            raise ConfigurationError(f"MixUpCutMix expects images of shape (B, C, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ConfigurationError("MixUpCutMix needs float images; normalize them first (normalize=True)")
        if labels.ndim == 1:
            targets = one_hot_targets(labels, self.num_classes, self.label_smoothing).to(images.device)
        else:
            targets = labels.float()
        if not self.enabled or images.shape[0] < 2 or float(torch.rand(())) >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < self.switch_prob)
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            h, w = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the box was clipped at the border: use its real area
        else:
            lam = self._beta(self.mixup_alpha)
            images = images.mul(lam).add_(images.flip(0), alpha=1.0 - lam)
        targets = targets.mul(lam).add_(targets.flip(0), alpha=1.0 - lam)
        return images, targets

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"prob={self.prob}, switch_prob={self.switch_prob}")
