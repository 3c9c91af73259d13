"""A header timeout for uvicorn, the HTTP server of BentoML's workers.

uvicorn closes idle keep-alive connections, but a connection that is opened and never
sends anything, or sends its request headers a byte at a time ("slowloris"), is kept
open forever: enough of them exhaust the worker's file descriptors. BentoML builds the
uvicorn configuration itself and offers no option for this, so :func:`install` points
uvicorn's ``"auto"`` HTTP protocol (what BentoML asks for) at
:class:`HeaderTimeoutProtocol`: the protocol uvicorn would have picked (httptools when
installed, else h11), plus one timer per connection.

The timer starts when the connection opens and again after each response; it is
cancelled as soon as a request's headers are complete (the request is then the ASGI
app's business: the body has its own timeout, ``serving.body_timeout_s``, in the
service's guard). When it fires, the client gets ``408 Request Timeout`` and the
connection is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol

_AUTO = "auto"
_TARGET = f"{__name__}:HeaderTimeoutProtocol"
_MESSAGE = b"request headers not received in time"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE)
)


class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, closing connections that do not finish their headers.

    Attributes:
        header_timeout_s: seconds a connection has to complete a request's headers,
            from when it opens or its previous response ends (set by :func:`install`).

    """

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _cycle_at_arm: object | None = None

    def connection_made(self, transport) -> None:  # noqa: D102 - asyncio.Protocol API
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:  # noqa: D102
        super().data_received(data)
        # A new request cycle exists once its headers are parsed.
        if self._header_timer is not None and self.cycle is not self._cycle_at_arm:
            self._disarm()

    def on_response_complete(self) -> None:  # noqa: D102
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:  # noqa: D102
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._cycle_at_arm = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and (cycle is not self._cycle_at_arm or not cycle.response_complete):
            return  # a request is being served (new headers, or a pipelined one)
        self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def install(header_timeout_s: float) -> None:
    """Make uvicorn's ``"auto"`` HTTP protocol :class:`HeaderTimeoutProtocol`.

    Call it in the worker before uvicorn loads its configuration (BentoML imports the
    service module first, which calls this).
    """
    from uvicorn import config

    HeaderTimeoutProtocol.header_timeout_s = float(header_timeout_s)
    config.HTTP_PROTOCOLS[_AUTO] = _TARGET


__all__ = ["HeaderTimeoutProtocol", "install"]
