"""`poolx serve`: set up and run the HTTP server over an export (the CLI only parses flags and calls `serve`).

On the CPU the server runs `threads` single-threaded model runs at once (on the small merged batches a server sees,
1.15-1.2x one multi-threaded run: benchmarks/RESULTS.md); on a GPU one run at a time.

Connections (protocol.py): at most `max_connections` (beyond it a new one closes the one waiting longest without
a request; /health always gets through); each must send its request head within `header_timeout` seconds, its
body within `body_timeout` and take its answer within `body_timeout`, and is closed after `timeout_keep_alive`
idle seconds between requests.

SIGTERM and Ctrl-C drain: the server stops accepting, closes idle connections, answers new requests on open ones
with a JSON 503, and gives the requests it holds up to `drain_timeout` seconds to finish. Those still running then
are cancelled and each answered with a JSON 503. The last line says how many were answered and how many failed;
`serve` returns those counts (the CLI exits 1 when any request failed, 0 otherwise). A second Ctrl-C stops at once
(what is held is failed the same way)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from poolx.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SPARE_FDS = 160  # descriptors beyond the connections: the model's files, the event loop, accepts not yet closed


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    provider: str = "auto"
    api_key: str | None = None
    model_name: str | None = None
    threads: int | None = None  # CPU: batches run at once, one thread each (default: all cores)
    max_batch_tokens: int = 8192
    max_wait_ms: float = 0.0
    max_inputs: int = 2048
    max_connections: int = 512  # open connections (a new one closes the longest-idle one beyond it)
    header_timeout: float = 10.0  # seconds for a request line and headers, from connecting or a request's first byte
    body_timeout: float = 30.0  # seconds for a request body after its head, and for a client to take its response
    timeout_keep_alive: float = 5.0  # seconds an idle connection is kept between requests
    drain_timeout: float = 8.0  # seconds held requests get to finish on SIGTERM (inside `docker stop`'s 10)
    quiet: bool = False  # no access log

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise UsageError(f"--port must be 1..65535, got {self.port}")
        if self.max_batch_tokens < 1 or self.max_wait_ms < 0 or self.max_inputs < 1:
            raise UsageError("--max-batch-tokens and --max-inputs must be positive, --max-wait-ms not negative")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.max_connections < 1:
            raise UsageError(f"--max-connections must be at least 1, got {self.max_connections}")
        for flag, value in (("--header-timeout", self.header_timeout), ("--body-timeout", self.body_timeout),
                            ("--timeout-keep-alive", self.timeout_keep_alive)):
            if not 0 < value < 86400:
                raise UsageError(f"{flag} must be a positive number of seconds (under a day), got {value}")
        if not 0 <= self.drain_timeout < 86400:
            raise UsageError(f"--drain-timeout must be 0 or more seconds (under a day), got {self.drain_timeout}")


@dataclass(frozen=True)
class Stopped:
    """How a stop went, for the requests other than /health that finished while it drained."""

    answered: int
    failed: int  # held past the drain timeout: a JSON 503
    refused: int  # arrived while stopping: a JSON 503
    lost: int  # the client went away first
    drain_timeout: float

    def line(self) -> str:
        if not (self.answered or self.failed or self.refused or self.lost):
            return "stopped: no requests were in flight"
        parts = [f"{self.answered} request{'s' * (self.answered != 1)} answered"]
        if self.failed:
            parts.append(f"{self.failed} failed with 503 after the {self.drain_timeout:g} s drain timeout")
        if self.refused:
            parts.append(f"{self.refused} refused with 503 (sent while stopping)")
        if self.lost:
            parts.append(f"{self.lost} lost (the client went away or was too slow)")
        return "stopped: " + ", ".join(parts)


def serve(
    directory: Path, options: ServeOptions, *, say: Callable[[str], None] = print,
    note: Callable[[str], None] = print,
) -> Stopped:
    """Serve the export in `directory` until SIGTERM/SIGINT, and say how the stop went (`say` gets the start and
    stop lines, `note` warnings). Raises UsageError for a missing extra, a bad option, a busy port;
    BrokenExportError for a bad directory."""
    try:
        import fastapi  # noqa: F401
        import httptools  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("poolx serve needs its extra: pip install 'poolx[serve]'") from None
    options.check()
    _ensure_descriptors(options.max_connections)
    try:  # refuse a busy or unusable address before loading the model
        with socket.create_server((options.host, options.port)):
            pass
    except OSError as e:
        raise UsageError(f"cannot listen on {options.host}:{options.port}: {e.strerror or e}") from None

    from poolx.serve.app import AccessLog, Lifecycle, Limits, create_app
    from poolx.serve.protocol import Connections, protocol_class

    embedder = open_embedder(directory, options.provider, options.threads)
    limits = Limits(
        max_inputs=options.max_inputs, max_batch_tokens=options.max_batch_tokens, max_wait_ms=options.max_wait_ms,
        workers=(options.threads or os.cpu_count() or 1) if not embedder.provider.gpu else 1,
    )
    life = Lifecycle()
    log = None if options.quiet else AccessLog()
    application = create_app(
        embedder, model_name=options.model_name, api_key=options.api_key, limits=limits, lifecycle=life, access_log=log,
    )
    connections = Connections(
        max_connections=options.max_connections, header_timeout=options.header_timeout,
        body_timeout=options.body_timeout, log=log,
    )
    if options.host not in LOOPBACK and not options.api_key:
        note(f"note: listening on {options.host} without --api-key: anyone who can reach it can use it")
    say(
        f"serving {directory} ({embedder.manifest.pooling['name']} pooler, dim {embedder.width}) on "
        f"{embedder.provider.description} at http://{options.host}:{options.port}  (POST /v1/embeddings, POST /embed, "
        "GET /v1/models /health /info /metrics)"
    )
    config = uvicorn.Config(
        application, host=options.host, port=options.port, log_level="warning", access_log=False,
        http=protocol_class(connections), ws="none", timeout_keep_alive=options.timeout_keep_alive,  # type: ignore[arg-type]
    )
    server = _draining_server(uvicorn.Server)(config, life, options.drain_timeout, say)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn drains, then re-raises the signal it caught to
        signal.signal(sig, lambda *_: None)  # these no-ops, so a drained server returns instead of dying by it
    try:
        server.run()
    except (OSError, SystemExit) as e:  # uvicorn exits(1) when it cannot bind
        raise UsageError(f"cannot serve on {options.host}:{options.port}: {getattr(e, 'strerror', None) or e}") from None
    if not server.started:
        raise UsageError(f"could not start the server on {options.host}:{options.port} (is the port in use?)")
    stopped = Stopped(life.answered, life.failed, life.refused, life.lost, options.drain_timeout)
    say(stopped.line())
    return stopped


def _draining_server(base: type) -> type:
    """uvicorn's Server with poolx's drain in place of its graceful shutdown (which cancels what is still running
    after `timeout_graceful_shutdown` and lets uvicorn answer it with a plain-text 500)."""

    class DrainingServer(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any, lifecycle: Any, drain_timeout: float, say: Callable[[str], None]) -> None:
            super().__init__(config)
            self.lifecycle, self.drain_timeout, self.say = lifecycle, drain_timeout, say

        async def shutdown(self, sockets: Any = None) -> None:
            loop = asyncio.get_running_loop()
            state = self.server_state
            self.lifecycle.draining = True  # from here new requests get a 503 and finished ones are counted
            held = self.lifecycle.in_flight
            self.say(f"stopping: {held} request{'s' * (held != 1)} in flight get up to {self.drain_timeout:g} s to finish")
            for _ in range(2):  # take the connections and bytes already here: a request begun is answered (503)
                await asyncio.sleep(0.01)
            for listener in self.servers:
                listener.close()
            for connection in list(state.connections):
                connection.shutdown()  # idle ones close; busy ones close once answered
            deadline = loop.time() + self.drain_timeout
            while (state.tasks or state.connections) and loop.time() < deadline and not self.force_exit:
                await asyncio.sleep(0.02)
            if state.tasks:
                for task in list(state.tasks):
                    task.cancel()  # poolx's Guard answers each with a JSON 503
                give_up = loop.time() + 2.0
                while state.tasks and loop.time() < give_up:
                    await asyncio.sleep(0.01)
            for connection in list(state.connections):  # a client that does not take its answer is let go
                connection.transport.abort()
            if not self.force_exit:
                await self.lifespan.shutdown()  # the batcher finishes its current runs and stops

    return DrainingServer


def _ensure_descriptors(max_connections: int) -> None:
    """Raise the soft limit on open files to what `max_connections` needs when the hard limit allows it; refuse
    the option when it does not (a server out of descriptors cannot accept /health either)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    need = max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return
    raise UsageError(
        f"--max-connections {max_connections} needs {need} open files and this process may open {hard} "
        f"(ulimit -n); lower --max-connections to {max(1, hard - SPARE_FDS)} or less"
    )


def open_embedder(directory: Path, provider: str, threads: int | None):
    """The server's Embedder: on the CPU single-threaded (the batcher runs one batch per core), without spinning
    threads (they would take the event loop's core); on a GPU with onnxruntime's default CPU threads; on OpenVINO
    compiled for throughput over every core (`threads` unless given). When `auto`
    could not start CUDA (it warned), the CPU is reopened single-threaded."""
    from poolx.manifest import Manifest
    from poolx.runtime.embedder import Embedder

    chosen = Manifest.read(directory).variant.choose(provider)
    embedder = Embedder(directory, provider, threads=threads if chosen.spreads_runs else 1, spinning=False)
    if embedder.provider is not chosen:  # auto fell back to the CPU
        embedder = Embedder(directory, embedder.provider.name, threads=1, spinning=False)
    return embedder
