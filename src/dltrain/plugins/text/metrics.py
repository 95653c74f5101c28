"""Language-modelling metrics computed from summed negative log-likelihoods (no logits kept around).

Both keep float32 sums (float64 is unavailable on MPS) as metric states (``dist_reduce_fx="sum"``), so the value over several ranks is the exact
corpus-level value, not a mean of per-rank ratios.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

__all__ = ["BitsPerByte", "Perplexity"]


class BitsPerByte(Metric):
    """``sum(nats) / (ln 2 * sum(bytes))``: tokenizer-independent compression of the text.

    Example:
        >>> m = BitsPerByte()
        >>> m.update(torch.tensor(math.log(2) * 8.0), torch.tensor(4))
        >>> float(m.compute())
        2.0
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False
    nats: Tensor
    n_bytes: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("nats", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("n_bytes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nats: Tensor, n_bytes: Tensor) -> None:  # type: ignore[override]
        """Args: nats: summed cross-entropy of the targets (natural log); n_bytes: bytes they cover."""
        self.nats += nats.detach().float().sum()
        self.n_bytes += n_bytes.detach().to(torch.long).sum()

    @override
    def compute(self) -> Tensor:
        return self.nats / (math.log(2) * self.n_bytes.clamp(min=1))


class Perplexity(Metric):
    """``exp(sum(nats) / number of target tokens)``.

    Example:
        >>> m = Perplexity()
        >>> m.update(torch.tensor(0.0), torch.tensor(10))
        >>> float(m.compute())
        1.0
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False
    nats: Tensor
    tokens: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("nats", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @override
    def update(self, nats: Tensor, n_tokens: Tensor) -> None:  # type: ignore[override]
        self.nats += nats.detach().float().sum()
        self.tokens += n_tokens.detach().to(torch.long).sum()

    @override
    def compute(self) -> Tensor:
        return torch.exp(self.nats / self.tokens.clamp(min=1))
