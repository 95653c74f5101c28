"""MixUp/CutMix on the device (torchvision's v2 transforms inside): shapes, label mixing, determinism."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")

from dltrain.errors import ConfigurationError
from dltrain.plugins.vision import MixUpCutMix, one_hot_targets


def _batch(n: int = 8, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % classes


def test_mixup_blends_images_and_targets_with_one_lambda() -> None:
    torch.manual_seed(0)
    x, y = _batch()
    mixed, targets = MixUpCutMix(5, mixup_alpha=0.4)(x, y)
    assert mixed.shape == x.shape and targets.shape == (8, 5)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    lam = float(targets[0, y[0]]) if y[0] != y[-1] else None
    assert lam is not None
    # torchvision pairs each sample with the previous one (the batch rolled by one)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area() -> None:
    torch.manual_seed(3)
    x, y = _batch()
    mixed, targets = MixUpCutMix(5, cutmix_alpha=1.0)(x, y)
    from_other = (mixed != x).any(1)[0]  # pixels of sample 0 taken from sample 7
    area = float(from_other.float().mean())
    assert torch.allclose(targets[0, y[-1]], torch.tensor(area), atol=1e-6)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    # the pasted pixels are exactly the partner's
    assert torch.equal(mixed[0][:, from_other], x[7][:, from_other])


def test_disabled_or_unlucky_batches_only_get_one_hot_targets() -> None:
    x, y = _batch()
    for mix in (MixUpCutMix(5), MixUpCutMix(5, mixup_alpha=1.0, prob=0.0)):
        out, targets = mix(x, y)
        assert out is x and torch.equal(targets, one_hot_targets(y, 5))


def test_label_smoothing_of_mixed_targets() -> None:
    t = one_hot_targets(torch.tensor([1]), 4, label_smoothing=0.2)
    assert torch.allclose(t, torch.tensor([[0.05, 0.85, 0.05, 0.05]]))
    x, y = _batch(4)
    torch.manual_seed(1)
    _, plain = MixUpCutMix(5, mixup_alpha=1.0)(x, y)
    torch.manual_seed(1)
    _, smoothed = MixUpCutMix(5, mixup_alpha=1.0, label_smoothing=0.1)(x, y)
    # the same mix of the smoothed one-hot targets: every class gets 0.1 / 5, the rest keeps 0.9 of its weight
    assert torch.allclose(smoothed, plain * 0.9 + 0.02) and torch.allclose(smoothed.sum(-1), torch.ones(4))
    with pytest.raises(ConfigurationError, match="class indices"):
        MixUpCutMix(5, mixup_alpha=1.0)(x, torch.full((4, 5), 0.2))


def test_mixing_is_deterministic_under_a_seed() -> None:
    x, y = _batch()
    mix = MixUpCutMix(5, mixup_alpha=0.2, cutmix_alpha=1.0)
    torch.manual_seed(7)
    a = [mix(x, y) for _ in range(4)]
    torch.manual_seed(7)
    b = [mix(x, y) for _ in range(4)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


def test_bad_configuration_and_inputs() -> None:
    with pytest.raises(ConfigurationError):
        MixUpCutMix(5, mixup_alpha=-1)
    with pytest.raises(ConfigurationError, match="float"):
        MixUpCutMix(5, mixup_alpha=1)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(ConfigurationError, match="B, C, H, W"):
        MixUpCutMix(5, mixup_alpha=1)(torch.zeros(3, 4, 4), torch.tensor([0, 1, 2]))
