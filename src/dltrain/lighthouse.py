"""The quorum server of a fault-tolerant job (`dltrain.FaultTolerant`): torchft's lighthouse, in this process.

Every replica group's first rank reports to it (heartbeats every 0.1 s) and asks it, at every step, which groups
train that step. Start one per job, where every group can reach it, and give the groups its address in
``TORCHFT_LIGHTHOUSE``. It is a single point of failure, as in torchft: if it stops, the groups wait for it (and
fail after ``FaultTolerant.quorum_timeout``).

Example:
    $ dltrain lighthouse --min-replicas 1 --port 29510
    [dltrain] lighthouse at http://myhost:29510 (min 1 replica groups); export TORCHFT_LIGHTHOUSE=http://myhost:29510

In tests (or a launcher script), in-process::

    with Lighthouse(min_replicas=1) as lighthouse:
        os.environ["TORCHFT_LIGHTHOUSE"] = lighthouse.address
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from dltrain.errors import ConfigurationError

__all__ = ["Lighthouse"]


class Lighthouse:
    """torchft's lighthouse started in this process; stopped by `shutdown` or at the end of a ``with`` block.

    Args:
        min_replicas: the fewest replica groups a quorum needs (a majority of the job's groups avoids two halves
            of a split network training apart; 1 lets a single survivor go on).
        port: the port to listen on (0: any free port; `address` says which).
        host: the interface to listen on (``"::"``: every interface).
        join_timeout: seconds a new quorum waits for groups that are alive but have not asked to join yet.
        heartbeat_timeout: seconds without a heartbeat after which a group counts as dead: how long the live groups
            wait before training on without a group that died between two steps.

    Example:
        >>> from dltrain.lighthouse import Lighthouse
        >>> with Lighthouse(min_replicas=1, port=0) as lighthouse:  # any free port
        ...     print(lighthouse.address.startswith("http://"))  # what TORCHFT_LIGHTHOUSE must hold
        True
    """

    def __init__(self, min_replicas: int = 1, *, port: int = 0, host: str = "::", join_timeout: float = 60.0,
                 heartbeat_timeout: float = 5.0) -> None:
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 1:
            raise ConfigurationError(f"Lighthouse(min_replicas={min_replicas!r}): use a whole number, 1 or more")
        for name, value in (("join_timeout", join_timeout), ("heartbeat_timeout", heartbeat_timeout)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"Lighthouse({name}={value!r}): use a number of seconds, 0 or more")
        from dltrain._compat import lighthouse_server
        from dltrain._fault_tolerance import import_torchft

        import_torchft()  # its log level, and the error naming the extra when it is missing

        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.min_replicas = min_replicas
        self._server: Any = lighthouse_server(bind, min_replicas, join_timeout_ms=int(join_timeout * 1000),
                                              quorum_tick_ms=100, heartbeat_timeout_ms=int(heartbeat_timeout * 1000))
        self.address: str = self._server.address()

    def shutdown(self) -> None:
        """Stop serving (the groups then wait, and fail after their quorum timeout)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> Lighthouse:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.shutdown()
