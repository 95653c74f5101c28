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
_UNSEEN: Any = object()  # SampleDecoder: an extension not looked up yet
_PASS: Any = object()  # ... a "__" entry, passed through
_REFUSE: Any = object()  # ... a pickle-based format that was not enabled


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _int(data: bytes) -> int:
    return int(data)  # int() parses ASCII digits in bytes itself, surrounding whitespace allowed


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
        self._resolved: dict[str, Any] = {}  # extension -> its decoder or marker (`_resolve`), as used
        self._layouts: dict[tuple[str, ...], list[tuple[str, Any]]] = {}  # `decode_in_place`'s work per layout

    def _find(self, ext: str) -> Decoder | None:
        fn = self.decoders.get(ext)
        if fn is None:
            fn = self.decoders.get(ext.rsplit(".", 1)[-1])
        return fn

    def _resolve(self, ext: str) -> Any:
        """`_find`, remembered per extension (a sample has few, and every sample asks again).

        The decoder, None (kept as bytes), `_REFUSE` (a pickle-based format not enabled) or `_PASS` (``__``
        entries).
        """
        if ext not in self._resolved:
            fn = self._find(ext)
            if ext[:2] == "__":
                fn = _PASS
            elif fn is None and ext.rsplit(".", 1)[-1] in UNSAFE_DECODERS:
                fn = _REFUSE
            self._resolved[ext] = fn
        return self._resolved[ext]

    def decode_in_place(self, sample: dict[str, Any]) -> dict[str, Any]:
        """`__call__` for a sample dict the caller owns (a reader's).

        Its fields are replaced by their decoded values in place, and the fields kept as bytes are not
        touched. Returns ``sample``.

        Why: most of a sample's entries (``__key__``, ``__url__``, fields kept as bytes) need no work; the loop
        over the ones that do is resolved once per field layout.
        """
        layout = tuple(sample)
        work = self._layouts.get(layout)
        if work is None:
            if len(self._layouts) >= 64:  # bounded: layouts of odd shards
                self._layouts.clear()
            work = self._layouts[layout] = [(ext, self._resolve(ext)) for ext in layout
                                            if self._resolve(ext) is not _PASS]
        for ext, fn in work:
            value = sample[ext]
            if fn is None:
                if type(value) is not bytes and isinstance(value, (bytearray, memoryview)):
                    sample[ext] = bytes(value)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                sample[ext] = self._decode(sample, ext, fn, value)
        return sample

    def _decode(self, sample: Mapping[str, Any], ext: str, fn: Any, value: Any) -> Any:
        """One field's value (raises `DataError` naming the field, the shard and the key)."""
        if fn is _REFUSE:
            last = ext.rsplit(".", 1)[-1]
            raise DataError(
                f"field {ext!r} is a pickle-based format and loading it can run arbitrary code, so it is "
                f"not decoded by default; if you trust this data pass unsafe_decoders=({last!r},)",
                url=sample.get("__url__"),
                key=sample.get("__key__"),
            )
        try:
            return fn(value if type(value) is bytes else bytes(value))
        except DataError:
            raise
        except Exception as exn:
            raise DataError(
                f"cannot decode field {ext!r} with {getattr(fn, '__name__', fn)!s} "
                f"({type(exn).__name__}: {exn}); fix or drop the sample, or use on_error='skip'",
                url=sample.get("__url__"),
                key=sample.get("__key__"),
            ) from exn

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Decode the fields of one raw sample (``__``-prefixed entries are passed through)."""
        out: dict[str, Any] = {}
        resolved = self._resolved
        for ext, value in sample.items():
            fn = resolved.get(ext, _UNSEEN)
            if fn is _UNSEEN:
                fn = self._resolve(ext)
            if fn is _PASS or not isinstance(value, (bytes, bytearray, memoryview)):
                out[ext] = value
                continue
            if fn is None:
                out[ext] = value if type(value) is bytes else bytes(value)
                continue
            out[ext] = self._decode(sample, ext, fn, value)
        return out
