"""The plugin registry.

A plugin bundles what one data domain needs (decoders, per-sample transforms, collate, device-side batch
transforms, ready tasks, metrics and a shard builder) behind the same fields for every domain; the core uses it
through the `dltrain.data.domain.DataPlugin` protocol (``StreamingDataset(urls, plugin=..., stage=...)``). Built-in plugins
live in ``dltrain.plugins.<name>`` and are imported only when asked for; third-party packages add theirs through
the entry-point group ``dltrain.plugins``:

    [project.entry-points."dltrain.plugins"]
    myplugin = "mypackage.dltrain_plugin:plugin"

Example:
    >>> import dltrain.plugins
    >>> "vision" in dltrain.plugins.available()
    True
    >>> vision = dltrain.plugins.get("vision")  # imports torchvision now, not at `import dltrain`
    >>> train = vision.loader("data/images-{000000..000001}.tar", "train", batch_size=8,
    ...                       options={"size": 224})
    >>> images, labels = next(iter(train))
    >>> images.shape
    torch.Size([8, 3, 224, 224])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from dltrain.data.domain import SampleTransform, check_stage
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.data import StreamingDataLoader, StreamingDataset

__all__ = ["Plugin", "PluginDependencyError", "available", "get", "register"]

_BUILTIN = {
    "vision": "dltrain.plugins.vision",
    "text": "dltrain.plugins.text",
    "audio": "dltrain.plugins.audio",
}
_ENTRY_POINT_GROUP = "dltrain.plugins"


def _identity_transform(stage: str, **options: Any) -> SampleTransform:
    """The default transform: the decoded sample dict as it is."""
    check_stage(stage)
    if options:
        raise ConfigurationError(f"this plugin's transform takes no options, got {sorted(options)}")
    return _keep_sample


def _keep_sample(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


def _no_device_transform(stage: str, **options: Any) -> None:
    """The default device transform: nothing to do on the device."""
    check_stage(stage)


@dataclass(frozen=True)
class Plugin:
    """What a domain plugin provides. Every field has the same meaning and signature in every domain.

    Satisfies `dltrain.data.domain.DataPlugin`, the part the core uses.

    Args:
        name: registry name.
        extra: the pip extra that installs its dependencies (``pip install 'dltrain[vision]'``).
        decoders: shard field extension -> decoder of the raw bytes (runs in the loader workers).
        transform: ``transform(stage, **options)`` -> per-sample CPU transform (decoded sample dict -> sample dict,
            or ``None`` to drop it); ``stage`` is ``"train"``, ``"val"``, ``"test"`` or ``"predict"``, options are
            keywords (sizes, lengths). Only ``"train"`` augments.
        collate: turns a list of samples into a batch.
        device_transform: ``device_transform(stage, **options)`` -> ``batch -> batch`` to run on the device in
            a task's ``on_after_batch_transfer`` (``None``: nothing to do for that stage).
        tasks: ready ``dltrain.Task`` subclasses.
        metrics: factories of torchmetrics metrics, ``factory(num_classes, **kwargs)`` for classification ones
            (`dltrain.plugins.metrics.CLASSIFICATION_METRICS`, shared by every domain).
        write_shards: builds shards (and their index) from the domain's usual on-disk layout. A domain with more
            than one layout exports one typed writer per layout instead, and this field raises an error naming
            them (text: ``write_lm_shards``, ``write_classification_shards``).

    Example:
        >>> vision = get("vision")  # a Plugin, found through the dltrain.plugins entry points
        >>> vision.name, vision.extra, sorted(vision.tasks)
        ('vision', 'vision', ['classification'])
    """

    name: str
    extra: str
    decoders: Mapping[str, Callable[[bytes], Any]] = field(default_factory=dict)
    transform: Callable[..., SampleTransform] = _identity_transform
    collate: Callable[[list], Any] | None = None
    device_transform: Callable[..., Callable[[Any], Any] | None] = _no_device_transform
    tasks: Mapping[str, type] = field(default_factory=dict)
    metrics: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    write_shards: Callable[..., list[str]] | None = None

    def dataset(self, urls: Any, stage: str, *, batch_size: int, options: Mapping[str, Any] | None = None,
                **kwargs: Any) -> StreamingDataset:
        """``StreamingDataset(urls, plugin=self, stage=stage, options=options, ...)``: decode -> transform -> collate.

        ``kwargs`` go to `dltrain.data.StreamingDataset` (``seed``, ``on_error``, ``collate_fn``, ...).
        """
        from dltrain.data import StreamingDataset

        return StreamingDataset(urls, batch_size=batch_size, plugin=self, stage=stage, options=options, **kwargs)

    def loader(self, urls: Any, stage: str, *, batch_size: int, num_workers: int = 2,
               options: Mapping[str, Any] | None = None, **kwargs: Any) -> StreamingDataLoader:
        """`dataset`'s resumable loader with ``num_workers`` worker processes."""
        return self.dataset(urls, stage, batch_size=batch_size, options=options, **kwargs).loader(num_workers)


class PluginDependencyError(ConfigurationError, ImportError):
    """A plugin's optional dependency is not installed."""


_registered: dict[str, Plugin | Callable[[], Plugin]] = {}


def register(name: str, plugin: Plugin | Callable[[], Plugin]) -> None:
    """Register a plugin (or a zero-argument callable that builds it on first use) under ``name``."""
    _registered[name] = plugin


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=_ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every plugin that :func:`get` can load: built-in, registered and installed entry points."""
    return sorted(set(_BUILTIN) | set(_registered) | set(_entry_points()))


def get(name: str) -> Plugin:
    """Load the plugin called ``name``.

    Raises:
        ConfigurationError: no plugin has that name (the message lists the available ones).
        PluginDependencyError: the plugin's optional dependency is missing (the message names the extra).
    """
    if name in _registered:
        entry = _registered[name]
        plugin = entry if isinstance(entry, Plugin) else entry()
        _registered[name] = plugin
        return plugin
    if name in _BUILTIN:
        module = importlib.import_module(_BUILTIN[name])
        plugin = module.plugin
    else:
        eps = _entry_points()
        if name not in eps:
            raise ConfigurationError(
                f"unknown plugin {name!r}; available plugins: {', '.join(available())}. "
                f"Third-party plugins register through the entry-point group {_ENTRY_POINT_GROUP!r}."
            )
        plugin = eps[name].load()
    if not isinstance(plugin, Plugin):
        raise ConfigurationError(f"plugin {name!r} is a {type(plugin).__name__}, not a dltrain.plugins.Plugin")
    _registered[name] = plugin
    return plugin


def require(module: str, *, plugin: str, extra: str) -> Any:
    """Import ``module`` for ``plugin``, or raise an error that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PluginDependencyError(
            f"the {plugin!r} plugin needs the package {module!r}, which is not installed: "
            f"pip install 'dltrain[{extra}]'"
        ) from err
