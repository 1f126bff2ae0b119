"""The server's HTTP/1.1 connections: uvicorn's httptools protocol with the guards a server facing slow or hostile
clients needs and uvicorn lacks.

uvicorn (0.29-0.55) closes a connection that sits idle *after* a response (`timeout_keep_alive`), but nothing bounds
a connection that never sends a request, sends its head a byte at a time, or stops half-way through its body, nor
the size of a request head; and its `limit_concurrency` still accepts every connection (each one a file
descriptor) and answers the ones over the limit with a plain-text 503, /health included. So each connection here:

- sends its whole request head (request line and headers, at most `MAX_HEAD_BYTES`) within `header_timeout`
  seconds of connecting, or of the first byte of its next request on a kept-alive connection (an idle
  kept-alive connection is uvicorn's `timeout_keep_alive`);
- sends its whole body within `body_timeout` seconds of the head;
- takes its response within `body_timeout` seconds (a client that stops reading is cut off, not buffered forever).

A client that broke a rule mid-request gets a JSON 408/431 and the connection is closed; one that had sent nothing
is closed. Beyond `max_connections`, a new connection closes the one that has waited longest without a request
(idle, or still sending its head); when every connection holds a request, the new one may still ask /health,
and anything else gets a JSON 503. A request head that is not HTTP gets a JSON 400 (uvicorn's is plain text).
Websocket and other upgrades are not served."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024  # a request's line and headers (poolx's own are a few hundred bytes)


class Connections:
    """What every connection of one server shares: the limits, the access log, and the connections waiting for a
    request head (idle or still sending it), longest-waiting first."""

    def __init__(
        self, *, max_connections: int, header_timeout: float, body_timeout: float,
        log: Callable[[str, str, str, int], None] | None = None,
    ) -> None:
        self.max_connections, self.header_timeout, self.body_timeout = max_connections, header_timeout, body_timeout
        self.log = log  # log(client, method, path, status): the access log, for what a connection answers itself
        self.waiting: dict[GuardedProtocol, None] = {}  # insertion order: the longest-waiting first


def protocol_class(connections: Connections) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (`Config(http=...)`) for one server."""
    return type("PoolxHttpProtocol", (GuardedProtocol,), {"guard": connections})


class GuardedProtocol(HttpToolsProtocol):
    guard: Connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the guard's limit replaces uvicorn's (its 503s are plain text)
        self._read_timer: asyncio.TimerHandle | None = None  # the head's or the body's deadline
        self._send_timer: asyncio.TimerHandle | None = None  # the deadline for a client to take its response
        self._in_head = False  # bytes of a request head have come, not yet all of it
        self._head_bytes = 0  # the head's line and headers so far, as the parser gives them
        self._head_fed = 0  # bytes fed to the parser since the head began (while it is incomplete)
        self._stopping = False  # the server stopped while this connection was sending a head

    # -- connection -------------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        if len(self.connections) > guard.max_connections:
            victim = next((c for c in guard.waiting if c is not self), None)
            if victim is not None:
                victim._expire(503, "the server is at its connection limit; this connection waited longest")
            else:  # every other connection holds a request: this one may only ask /health
                self.app = _overflow(self.app)
        self._wait(self.guard.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.waiting.pop(self, None)
        self._cancel_read()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, without its plain-text 400 and its warning per bad request (a client could flood the log)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades are served: the request is answered as plain HTTP (its body, if any, times out)
        except httptools.HttpParserError:  # (a callback's exception is one: _count's)
            if self._head_bytes > MAX_HEAD_BYTES:  # (_count stopped the parser)
                self._reject(431, f"the request line and headers are longer than {MAX_HEAD_BYTES} bytes")
            else:
                self._reject(400, "the request is not valid HTTP/1.1")
            return
        if self._in_head:  # the head is not complete: every byte fed since it began is head (bounds the parser's buffer)
            self._head_fed += len(data)
            if self._head_fed > MAX_HEAD_BYTES:
                self._reject(431, f"the request line and headers are longer than {MAX_HEAD_BYTES} bytes")

    def shutdown(self) -> None:
        """The server is stopping: a connection in the middle of sending a request head is let finish it (the
        request is then answered with a 503 and the connection closed); uvicorn closes the others when idle."""
        if self._in_head:
            self._stopping = True
            return
        super().shutdown()

    # -- parser callbacks -------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_fed = True, 0, 0
        if self._read_timer is None:  # a kept-alive connection's next request: its head has header_timeout
            busy = self.cycle is not None and not self.cycle.response_complete  # (pipelined behind one)
            self._wait(self.guard.header_timeout, evictable=not busy)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("request head too large")  # the parser stops: data_received answers 431

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.guard.waiting.pop(self, None)
        self._cancel_read()
        super().on_headers_complete()
        if self._stopping and self.cycle is not None:
            self.cycle.keep_alive = False
        pipelined = bool(self.pipeline) and self.pipeline[0][0] is self.cycle
        if not pipelined and not self.transport.is_closing():  # (a pipelined request's body waits its turn)
            self._read_timer = self.loop.call_later(self.guard.body_timeout, self._expire, 408, "the request body did not arrive in time")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_read()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer, or starts a pipelined request
        if self.transport.get_write_buffer_size() and self._send_timer is None:
            self._send_timer = self.loop.call_later(self.guard.body_timeout, self._send_expired)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # no request under way: waiting for the next one
            self.guard.waiting.pop(self, None)
            self.guard.waiting[self] = None
        elif cycle.more_body and self._read_timer is None:  # a pipelined request started: its body's deadline
            self._read_timer = self.loop.call_later(self.guard.body_timeout, self._expire, 408, "the request body did not arrive in time")

    # -- deadlines --------------------------------------------------------------------------------------------------

    def _wait(self, seconds: float, evictable: bool = True) -> None:
        """Waiting for a request head, for at most `seconds` (and, unless a request is under way, first in line
        to be closed when the connections are over the limit)."""
        self.guard.waiting.pop(self, None)
        if evictable:
            self.guard.waiting[self] = None
        self._cancel_read()
        self._read_timer = self.loop.call_later(seconds, self._expire, 408, "the request head did not arrive in time")

    def _cancel_read(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _expire(self, status: int, message: str) -> None:
        """A deadline passed (or the connection was evicted): a JSON error if a request had begun and no response
        has, and the connection closed."""
        self._cancel_read()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head:  # part of a head came: answer it, once the request before it (pipelined) is answered
            if cycle is not None and not cycle.response_complete:
                self._read_timer = self.loop.call_later(self.guard.header_timeout, self._expire, status, message)
                return
            self._reject(status, message)
        elif cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # the app is answering: only cut a body that never ends
                self.transport.close()
                return
            # the app is waiting for the body: answer for it; it sees the client gone (poolx's Guard logs 408)
            cycle.scope["poolx.timed_out"] = status  # type: ignore[typeddict-unknown-key]
            cycle.disconnected = True
            cycle.message_event.set()
            self._reject(status, message, log=False)
        else:  # idle: nothing to answer
            self.guard.waiting.pop(self, None)
            self.transport.close()

    def _send_expired(self) -> None:
        self._send_timer = None
        if self.transport.get_write_buffer_size():  # the client has not taken its response: let it go
            self.transport.abort()

    def _reject(self, status: int, message: str, *, log: bool = True) -> None:
        """Answer with a JSON error and close, from the protocol (no app involved)."""
        from poolx.serve.app import error_body

        self._in_head = False
        self.guard.waiting.pop(self, None)
        self._cancel_read()
        path = self.scope.get("path", "") if self.scope else ""
        body = json.dumps(error_body(path, message)).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        if log and self.guard.log is not None:
            method = self.scope.get("method", "-") if self.scope else "-"
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            self.guard.log(client, method, path or "-", status)


def _overflow(app: Any) -> Any:
    """A connection over the limit while every other one holds a request: the app sees it marked (its Guard
    answers /health, and 503 to everything else)."""

    async def marked(scope: Any, receive: Any, send: Any) -> None:
        scope["poolx.overflow"] = True
        await app(scope, receive, send)

    return marked
