"""The classification metrics every domain plugin shares, as factories ``factory(num_classes, **kwargs)``.

Each plugin's ``metrics`` holds these same factories, so ``plugin.metrics["accuracy"](10)`` means the same in
every domain. Defaults are the numbers usually reported: accuracy over all samples (micro average), macro F1.

Example:
    >>> accuracy(10, top_k=5).top_k
    5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

__all__ = ["CLASSIFICATION_METRICS", "accuracy", "confusion_matrix", "f1"]


def accuracy(num_classes: int, top_k: int = 1, **kwargs: Any) -> MulticlassAccuracy:
    """Top-k accuracy over all samples (``average="micro"`` unless given)."""
    return MulticlassAccuracy(num_classes=num_classes, top_k=top_k, **{"average": "micro", **kwargs})


def f1(num_classes: int, **kwargs: Any) -> MulticlassF1Score:
    """F1 score (``average="macro"`` unless given: every class counts the same)."""
    return MulticlassF1Score(num_classes=num_classes, **{"average": "macro", **kwargs})


def confusion_matrix(num_classes: int, **kwargs: Any) -> MulticlassConfusionMatrix:
    """Counts per (true class, predicted class)."""
    return MulticlassConfusionMatrix(num_classes=num_classes, **kwargs)


#: name -> factory, the ``metrics`` every classification plugin starts from.
CLASSIFICATION_METRICS: dict[str, Callable[..., Any]] = {
    "accuracy": accuracy,
    "f1": f1,
    "confusion_matrix": confusion_matrix,
}
