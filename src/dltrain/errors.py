"""Errors raised by dltrain. Each one says what was wrong, where, and what to do."""

from __future__ import annotations


class DltrainError(Exception):
    """Base class of every error dltrain raises for bad input or configuration."""


class ConfigurationError(DltrainError, ValueError):
    """A Trainer or Task setting that cannot work (unknown strategy, unsupported precision, ...)."""


class StepError(DltrainError):
    """A step returned or produced something the Trainer cannot use (wrong loss shape, NaN loss, ...)."""


class NotAttachedError(DltrainError, RuntimeError):
    """A task's Trainer was asked for (``task.trainer``, ``self.log``) before any Trainer ran it."""


class CheckpointError(DltrainError):
    """A checkpoint that cannot be read or does not match the model."""


class DataError(DltrainError):
    """Bad data: a missing or corrupt shard, an undecodable sample, a missing field.

    Attributes:
        url: the shard the sample came from, if known.
        key: the sample's ``__key__``, if known.
    """

    def __init__(self, message: str, *, url: str | None = None, key: str | None = None) -> None:
        where = []
        if url is not None:
            where.append(f"shard {url!r}")
        if key is not None:
            where.append(f"sample {key!r}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.url = url
        self.key = key
        self.reason = message

    def __reduce__(self):  # keep url/key when the error crosses a worker process boundary
        return (_rebuild_data_error, (type(self), self.reason, self.url, self.key))


def _rebuild_data_error(cls, reason, url, key):
    return cls(reason, url=url, key=key)


class DistributedError(DltrainError, RuntimeError):
    """A rank failed, ran out of data early, or the ranks disagree."""
