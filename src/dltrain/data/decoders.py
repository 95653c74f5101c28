"""Safe field decoders: shard field extension -> ``bytes -> value``.

Only formats that cannot run code are decoded by default. Pickle-based formats (``pyd``, ``pickle``, ``pth``,
``pt``) execute code when loaded, so they are decoded only when named in ``unsafe_decoders``; otherwise such a
field raises a `DataError` saying how to opt in. Unknown extensions stay ``bytes``.

The opt-in decoders really unpickle: ``pyd``/``pickle`` with ``pickle.loads`` and ``pth``/``pt`` with
``torch.load(..., weights_only=False)`` (any pickled object, not only tensors). They are the one place where
dltrain loads with ``weights_only=False``: checkpoints are always loaded with ``weights_only=True``.

A field is looked up by its full extension first (``"seg.png"``), then by its last part (``"png"``), as
webdataset does.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from dltrain.errors import ConfigurationError, DataError

__all__ = ["SAFE_DECODERS", "UNSAFE_DECODERS", "SampleDecoder"]

Decoder = Callable[[bytes], Any]


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _int(data: bytes) -> int:
    return int(data.decode("ascii").strip())


def _json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _pickle(data: bytes) -> Any:
    return pickle.loads(data)


def _torch(data: bytes) -> Any:
    """``pth``/``pt`` (opt-in only): ``torch.load(weights_only=False)``, which can run code from the data."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=False)


SAFE_DECODERS: dict[str, Decoder] = {
    **dict.fromkeys(("txt", "text", "transcript"), _text),
    **dict.fromkeys(("cls", "cls2", "class", "count", "index", "inx", "id"), _int),
    **dict.fromkeys(("json", "jsn"), _json),
    "npy": _npy,
    "npz": _npz,
}

UNSAFE_DECODERS: dict[str, Decoder] = {"pyd": _pickle, "pickle": _pickle, "pth": _torch, "pt": _torch}


class SampleDecoder:
    """Decodes every field of a raw sample dict; picklable so it can travel to loader workers.

    Args:
        decode: extra decoders by extension (plugins' ``decoders``); they take precedence over the built-in ones.
        unsafe_decoders: extensions among ``pyd``, ``pickle``, ``pth``, ``pt`` to decode although loading them
            can run arbitrary code: ``pickle.loads``, and for ``pth``/``pt`` ``torch.load(weights_only=False)``
            (not the ``weights_only=True`` of checkpoint loading). Only name them for data you trust.

    Example:
        >>> SampleDecoder()({"__key__": "a", "cls": b"3", "txt": b"hi"})
        {'__key__': 'a', 'cls': 3, 'txt': 'hi'}
    """

    def __init__(self, decode: Mapping[str, Decoder] | None = None, unsafe_decoders: Iterable[str] = ()) -> None:
        unsafe = tuple(unsafe_decoders)
        unknown = sorted(set(unsafe) - set(UNSAFE_DECODERS))
        if unknown:
            raise ConfigurationError(
                f"unsafe_decoders={unknown!r}: only {sorted(UNSAFE_DECODERS)} can be enabled there; add your own "
                "decoders with decode={'ext': fn}"
            )
        self.decoders: dict[str, Decoder] = {**SAFE_DECODERS, **{k: UNSAFE_DECODERS[k] for k in unsafe}}
        for ext, fn in (decode or {}).items():
            if not callable(fn):
                raise ConfigurationError(f"decode[{ext!r}] must be a callable bytes -> value, got {type(fn).__name__}")
            self.decoders[ext.lower().lstrip(".")] = fn
        self._resolved: dict[str, Decoder | None] = {}  # extension -> its decoder (None: kept as bytes), as used

    def _find(self, ext: str) -> Decoder | None:
        fn = self.decoders.get(ext)
        if fn is None:
            fn = self.decoders.get(ext.rsplit(".", 1)[-1])
        return fn

    def _resolve(self, ext: str) -> Decoder | None:
        """`_find`, remembered per extension (a sample has few, and every sample asks again)."""
        if ext not in self._resolved:
            self._resolved[ext] = self._find(ext)
        return self._resolved[ext]

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Decode the fields of one raw sample (``__``-prefixed entries are passed through)."""
        out: dict[str, Any] = {}
        resolved = self._resolved
        for ext, value in sample.items():
            if ext[:2] == "__" or not isinstance(value, (bytes, bytearray, memoryview)):
                out[ext] = value
                continue
            fn = resolved[ext] if ext in resolved else self._resolve(ext)
            if fn is None:
                last = ext.rsplit(".", 1)[-1]
                if last in UNSAFE_DECODERS:
                    raise DataError(
                        f"field {ext!r} is a pickle-based format and loading it can run arbitrary code, so it is "
                        f"not decoded by default; if you trust this data pass unsafe_decoders=({last!r},)",
                        url=sample.get("__url__"),
                        key=sample.get("__key__"),
                    )
                out[ext] = value if type(value) is bytes else bytes(value)
                continue
            try:
                out[ext] = fn(value if type(value) is bytes else bytes(value))
            except DataError:
                raise
            except Exception as exn:
                raise DataError(
                    f"cannot decode field {ext!r} with {getattr(fn, '__name__', fn)!s} "
                    f"({type(exn).__name__}: {exn}); fix or drop the sample, or use on_error='skip'",
                    url=sample.get("__url__"),
                    key=sample.get("__key__"),
                ) from exn
        return out
