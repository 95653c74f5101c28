"""`CombinedLoader`: several training loaders as one, Lightning's modes, resumable at any batch.

``trainer.fit(task, {"images": loader_a, "text": loader_b})`` (or a list) trains on batches that have the same
structure: ``{"images": batch_a, "text": batch_b}``. The modes say when an epoch ends:

- ``"max_size_cycle"`` (default, as Lightning's): at the end of the longest loader; shorter ones start over.
- ``"min_size"``: at the end of the shortest.
- ``"max_size"``: at the end of the longest; an exhausted loader contributes ``None``.

The position is each loader's own position (their ``state_dict``) and the batches handed out, so a checkpoint
resumes at the exact batch. A loader that starts over within an epoch repeats the same order (dltrain's
samplers order an epoch by (seed, epoch)); Lightning's would reshuffle from the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dltrain.errors import ConfigurationError

__all__ = ["MODES", "CombinedLoader"]

MODES = ("max_size_cycle", "min_size", "max_size")


class CombinedLoader:
    """Several loaders iterated together (see the module docstring); implements the Trainer's loader protocol.

    Example:
        >>> numbers = torch.utils.data.DataLoader(torch.arange(6), batch_size=2)
        >>> letters = torch.utils.data.DataLoader(list("abcd"), batch_size=2)
        >>> loader = CombinedLoader({"n": numbers, "s": letters}, mode="max_size_cycle")
        >>> [(b["n"].tolist(), b["s"]) for b in loader]  # the shorter loader starts over
        [([0, 1], ['a', 'b']), ([2, 3], ['c', 'd']), ([4, 5], ['a', 'b'])]
    """

    def __init__(self, iterables: Mapping[str, Any] | Sequence[Any], mode: str = "max_size_cycle") -> None:
        if mode not in MODES:
            raise ConfigurationError(f"CombinedLoader(mode={mode!r}): use one of {MODES} for training")
        self._keys: list[Any] | None = list(iterables) if isinstance(iterables, Mapping) else None
        self.loaders: list[Any] = list(iterables.values()) if isinstance(iterables, Mapping) else list(iterables)
        if not self.loaders:
            raise ConfigurationError("CombinedLoader needs at least one loader")
        self.mode = mode
        self._batches = 0  # batches handed out this epoch
        self._total: int | None = None  # this epoch's length, fixed when it starts (loaders that cycle grow)
        self._resumed = False  # a position was loaded: the next iter() continues it

    @property
    def iterables(self) -> Mapping[str, Any] | list[Any]:
        """The loaders as given: a dict by name, or a list."""
        return dict(zip(self._keys, self.loaders)) if self._keys is not None else list(self.loaders)

    def __len__(self) -> int:
        if self._total is not None:
            return self._total
        lengths = [len(loader) for loader in self.loaders]
        return min(lengths) if self.mode == "min_size" else max(lengths)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to every loader that takes one; the next ``iter()`` starts it."""
        for loader in self.loaders:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
        if not self._resumed:
            self._batches = 0
            self._total = None

    def __iter__(self) -> Iterator[Any]:
        if self._resumed:  # the loaders continue where they were
            self._resumed = False
        else:
            self._batches = 0
            self._total = None
            self._total = len(self)
        return self._combine([iter(loader) for loader in self.loaders])

    def _combine(self, iterators: list[Iterator[Any]]) -> Iterator[Any]:
        total = len(self)
        exhausted = [False] * len(iterators)
        while self._batches < total:
            parts: list[Any] = []
            for i, it in enumerate(iterators):
                batch = next(it, _END) if not exhausted[i] else _END
                if batch is _END and self.mode == "max_size_cycle" and not exhausted[i]:
                    iterators[i] = iter(self.loaders[i])  # a shorter loader starts over
                    batch = next(iterators[i], _END)
                if batch is _END:
                    if self.mode == "min_size":
                        return
                    exhausted[i] = True
                    batch = None
                parts.append(batch)
            self._batches += 1
            yield dict(zip(self._keys, parts)) if self._keys is not None else parts

    def state_dict(self) -> dict[str, Any]:
        """The position in the epoch and each loader's own state, for a resume."""
        children = [loader.state_dict() if hasattr(loader, "state_dict") else None for loader in self.loaders]
        return {"mode": self.mode, "batches": self._batches, "total": len(self), "loaders": children}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict`'s position on the next ``iter()``.

        Raises:
            ConfigurationError: the state is of another mode or another number of loaders.
        """
        if state["mode"] != self.mode or len(state["loaders"]) != len(self.loaders):
            raise ConfigurationError(
                f"this checkpoint's CombinedLoader had mode {state['mode']!r} and {len(state['loaders'])} loaders; "
                f"this one has {self.mode!r} and {len(self.loaders)}: resume with the same loaders"
            )
        for loader, child in zip(self.loaders, state["loaders"]):
            if child is not None:
                if not hasattr(loader, "load_state_dict"):
                    raise ConfigurationError(
                        f"a {type(loader).__name__} in the CombinedLoader cannot restore its position; use map-style "
                        "DataLoaders or dltrain.data.StreamingDataset"
                    )
                loader.load_state_dict(child)
        self._batches = int(state["batches"])
        self._total = int(state["total"])
        self._resumed = True


_END = object()
