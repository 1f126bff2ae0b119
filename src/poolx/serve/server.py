"""`poolx serve`: set up and run the HTTP server over an export (the CLI only parses flags and calls `serve`).

On the CPU the server runs `threads` single-threaded model runs at once (on the small merged batches a server sees,
1.15-1.2x one multi-threaded run: benchmarks/RESULTS.md); on a GPU one run at a time. SIGTERM and Ctrl-C drain:
uvicorn stops accepting, in-flight requests are answered, the batcher finishes what is queued, and the process
exits 0."""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from poolx.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise UsageError(f"--port must be 1..65535, got {self.port}")
        if self.max_batch_tokens < 1 or self.max_wait_ms < 0 or self.max_inputs < 1:
            raise UsageError("--max-batch-tokens and --max-inputs must be positive, --max-wait-ms not negative")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")


def serve(
    directory: Path, options: ServeOptions, *, say: Callable[[str], None] = print,
    note: Callable[[str], None] = print,
) -> None:
    """Serve the export in `directory` until SIGTERM/SIGINT. `say` gets the start and stop lines, `note` warnings.
    Raises UsageError for a missing extra, a bad option, a busy port; BrokenExportError for a bad directory."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("poolx serve needs its extra: pip install 'poolx[serve]'") from None
    options.check()
    try:  # refuse a busy or unusable address before loading the model
        with socket.create_server((options.host, options.port)):
            pass
    except OSError as e:
        raise UsageError(f"cannot listen on {options.host}:{options.port}: {e.strerror or e}") from None

    from poolx.serve.app import Limits, create_app

    embedder = open_embedder(directory, options.provider, options.threads)
    limits = Limits(
        max_inputs=options.max_inputs, max_batch_tokens=options.max_batch_tokens, max_wait_ms=options.max_wait_ms,
        workers=(options.threads or os.cpu_count() or 1) if not embedder.provider.gpu else 1,
    )
    application = create_app(embedder, model_name=options.model_name, api_key=options.api_key, limits=limits)
    if options.host not in LOOPBACK and not options.api_key:
        note(f"note: listening on {options.host} without --api-key: anyone who can reach it can use it")
    say(
        f"serving {directory} ({embedder.manifest.pooling['name']} pooler, dim {embedder.width}) on "
        f"{embedder.provider.description} at http://{options.host}:{options.port}  (POST /v1/embeddings, POST /embed, "
        "GET /health /info /metrics)"
    )
    config = uvicorn.Config(
        application, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = uvicorn.Server(config)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn drains, then re-raises the signal it caught to
        signal.signal(sig, lambda *_: None)  # these no-ops, so a drained server exits 0, not by the signal
    try:
        server.run()
    except (OSError, SystemExit) as e:  # uvicorn exits(1) when it cannot bind
        raise UsageError(f"cannot serve on {options.host}:{options.port}: {getattr(e, 'strerror', None) or e}") from None
    if not server.started:
        raise UsageError(f"could not start the server on {options.host}:{options.port} (is the port in use?)")
    say("stopped: in-flight requests were answered")


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
