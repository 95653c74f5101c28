"""What the core needs from a data domain (a plugin), as Protocols: any object with these members works.

`dltrain.plugins.Plugin` satisfies `DataPlugin`; so does a third party's own class. The core only ever sees these
members, never a plugin module, so it depends on no domain library.

The contract, the same in every domain:

- ``decoders``: shard field extension -> ``bytes -> value``, run in the loader workers;
- ``transform(stage, **options)`` -> a picklable per-sample callable ``decoded sample dict -> sample``, where a
  *sample* is a ``dict`` of named fields (a classification domain names its class index ``"label"``) or ``None``
  for a sample to drop. An unlabelled sample (data without a class field, read with the transform's label field
  option set to ``None``) still has ``"label"``, set to ``-1``, so that batches keep one shape ``(inputs,
  labels)`` labelled or not and device transforms find the device from the labels; train on labelled data only. ``stage`` is one of `STAGES`; only ``"train"`` augments;
- ``collate(list of samples) -> batch``;
- ``device_transform(stage, **options)`` -> ``batch -> batch`` run on the device after the transfer (in a task's
  ``on_after_batch_transfer``), or ``None`` where the domain has nothing to do there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from dltrain.errors import ConfigurationError

__all__ = ["STAGES", "DataPlugin", "SampleTransform", "check_stage"]

#: The stages a transform is built for. Every stage but ``"train"`` is deterministic.
STAGES: tuple[str, ...] = ("train", "val", "test", "predict")


class SampleTransform(Protocol):
    """A per-sample transform: a decoded shard sample -> a sample dict (or ``None`` to drop it).

    Example:
        >>> from dltrain import plugins
        >>> transform = plugins.get("vision").transform("val", size=8)  # a SampleTransform
        >>> sorted(transform({"png": torch.zeros(3, 16, 16, dtype=torch.uint8), "cls": 1}))
        ['image', 'label']
    """

    def __call__(self, sample: dict[str, Any], /) -> Any:
        """The transformed sample, from a decoded sample dict."""
        ...


@runtime_checkable
class DataPlugin(Protocol):
    """The members of a plugin that `dltrain.data.StreamingDataset` and tasks use (see the module docstring).

    Example:
        >>> from dltrain import plugins
        >>> isinstance(plugins.get("vision"), DataPlugin)  # the part of a plugin the data layer uses
        True
    """

    @property
    def name(self) -> str:
        """The plugin's name, as registered in the ``dltrain.plugins`` entry-point group."""
        ...

    @property
    def decoders(self) -> Mapping[str, Callable[[bytes], Any]]:
        """Field decoders by extension (``{"png": decode_png, ...}``), added to the data layer's."""
        ...

    @property
    def collate(self) -> Callable[[list[Any]], Any] | None:
        """The batch collate function of this kind of sample (``None``: PyTorch's default)."""
        ...

    def transform(self, stage: str, **options: Any) -> SampleTransform:
        """The per-sample CPU transform of ``stage`` (``"train"``, ``"val"``, ...), run in the loader workers."""
        ...

    def device_transform(self, stage: str, **options: Any) -> Callable[[Any], Any] | None:
        """The per-batch transform on the device for ``stage`` (``None``: none)."""
        ...


def check_stage(stage: str) -> str:
    """Return ``stage`` if it is one of `STAGES`, else raise a `ConfigurationError` listing them."""
    if stage not in STAGES:
        raise ConfigurationError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    return stage
