"""An overall time limit for one archive's download, which the per-read socket timeout cannot give: a server
that trickles one byte a second resets that timeout with every byte and would hold a download for weeks.

:class:`Deadline` starts a timer thread; when it fires it shuts down every connection opened through
:meth:`Deadline.opener`, which ends a read blocked in any phase (connect, TLS handshake, headers, body).
The caller then sees an error or a short read and asks :meth:`Deadline.expired` what happened.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.request
from types import TracebackType
from typing import Any

#: Default overall limit per archive (CLI --deadline): 6 hours, ~100x what the 263 MB training archive
#: takes at a modest 5 MB/s, so it only ever stops a stalled or hostile transfer.
DEFAULT_DEADLINE = 6 * 3600.0


class Deadline:
    """Context manager: an overall time limit in seconds for the connections made through :meth:`opener`."""

    def __init__(self, seconds: float) -> None:
        """Arm nothing yet; the timer starts on ``__enter__``."""
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._fired = False
        self._socks: list[socket.socket] = []  # our own dup()s of the connections' sockets
        self._lock = threading.Lock()
        self._timer = threading.Timer(min(seconds, threading.TIMEOUT_MAX / 2), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        """Start the timer."""
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the timer and close our duplicates of the sockets (the connections themselves are untouched)."""
        self._timer.cancel()
        self._timer.join(timeout=5)
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()

    def expired(self) -> bool:
        """True once the limit has passed (whether or not the timer thread has run yet)."""
        return self._fired or time.monotonic() >= self._end

    def remaining(self) -> float:
        """Seconds left (never below a millisecond, so that it can serve as a socket timeout)."""
        return max(self._end - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        """Shut this connection down when the limit passes (at once if it already has).

        A duplicate descriptor is kept, so the shutdown reaches the connection even after the TLS layer
        has taken over the original socket object, and can never hit an unrelated file that reused the
        number of an already-closed socket.
        """
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            fired = self._fired
        if fired:
            self._shutdown(dup)

    def _fire(self) -> None:
        """Timer thread: mark the limit as passed and cut every watched connection."""
        with self._lock:
            self._fired = True
            socks = list(self._socks)
        for sock in socks:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        """Shut down both directions: a recv blocked in another thread returns at once."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener (proxies, redirects, HTTPS as usual) whose connections this deadline watches."""
        return urllib.request.build_opener(_HTTPHandler(self), _HTTPSHandler(self))


class _WatchedHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection that hands its TCP socket to a Deadline as soon as it is connected."""

    deadline: Deadline | None = None

    def __init__(self, *args: Any, deadline: Deadline | None = None, **kwargs: Any) -> None:
        """As HTTPConnection, plus the deadline to report to."""
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        """Connect, then let the deadline watch the socket (for HTTPS: before the TLS handshake)."""
        super().connect()
        if self.deadline is not None:
            self.deadline.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection, _WatchedHTTPConnection):
    """HTTPSConnection whose plain TCP connect (HTTPSConnection.connect's super().connect()) is watched."""

    def __init__(self, *args: Any, deadline: Deadline | None = None, **kwargs: Any) -> None:
        """As HTTPSConnection, plus the deadline to report to."""
        super().__init__(*args, **kwargs)
        self.deadline = deadline


class _WatchedHandler:
    """What the http and https handlers share: the deadline their connections report to."""

    def __init__(self, deadline: Deadline) -> None:
        """Remember the deadline."""
        super().__init__()
        self._deadline = deadline


class _HTTPHandler(_WatchedHandler, urllib.request.HTTPHandler):
    """Opens http:// URLs with watched connections."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        """Open with a watched connection."""
        return self.do_open(_WatchedHTTPConnection, req, deadline=self._deadline)


class _HTTPSHandler(_WatchedHandler, urllib.request.HTTPSHandler):
    """Opens https:// URLs with watched connections (default certificate checks)."""

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        """Open with a watched connection."""
        return self.do_open(_WatchedHTTPSConnection, req, deadline=self._deadline)
