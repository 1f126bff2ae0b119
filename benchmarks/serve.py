"""`poolx serve` throughput against the Embedder alone, on the same texts, in one run.

    python benchmarks/serve.py [--texts 2000] [--threads 2] [--clients 1,8,32] [--per-request 1] [--repeat 3]

Exports the packaged MiniLM with mean pooling, embeds the texts with `Embedder.embed` (batch 32) for the baseline,
then starts `poolx serve` in a subprocess and sends the same texts from C concurrent clients (asyncio + httpx in
this process, `--per-request` texts per request, OpenAI endpoint, float encoding). Prints texts/s and request
latency p50/p99 for each C and the ratio to the Embedder's throughput. Client and server share this machine's
cores, so the client's own CPU use counts against the server here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def corpus(n: int) -> list[str]:
    from poolx.exporter.calibration import CALIBRATION_TEXTS
    from poolx.parity.texts import VERIFY_TEXTS

    sentences = [s.strip() for t in (*CALIBRATION_TEXTS, *VERIFY_TEXTS) for s in t.split(". ") if s.strip()]
    return [f"{sentences[i % len(sentences)]} ({i})" for i in range(n)]


async def load(port: int, texts: list[str], clients: int, per_request: int) -> tuple[float, list[float], int]:
    """Send `texts` from `clients` concurrent keep-alive connections, `per_request` texts per OpenAI request.

    A bare HTTP/1.1 client on asyncio streams (like wrk, it costs tens of microseconds per request; httpx costs
    about a millisecond, which on a 2-core machine is CPU taken from the server). Returns seconds, per-request
    latencies and the number of non-200 answers."""
    chunks = [texts[i:i + per_request] for i in range(0, len(texts), per_request)]
    requests = []
    for chunk in chunks:
        body = json.dumps({"input": chunk, "encoding_format": "float"}).encode()
        head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        requests.append(head + body)
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                if not head.startswith(b"HTTP/1.1 200") or body[:1] != b"{":
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, latencies, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--per-request", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (the median is reported)")
    ap.add_argument("--serve-args", default="", help="more `poolx serve` options, e.g. '--max-wait-ms 2'")
    args = ap.parse_args()
    from poolx.exporter.export import export
    from poolx.runtime.embedder import Embedder

    texts = corpus(args.texts)
    with tempfile.TemporaryDirectory(prefix="poolx-serve-bench-") as tmp:
        directory = export(None, Path(tmp) / "mean", pooling="mean").directory
        embedder = Embedder(directory, "cpu", threads=args.threads)
        embedder.embed(texts[:64])
        rates = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            embedder.embed(texts, batch_size=32)
            rates.append(len(texts) / (time.perf_counter() - t))
        alone = statistics.median(rates)
        print(f"Embedder alone: {alone:,.0f} texts/s (median of {', '.join(f'{r:,.0f}' for r in rates)}; "
              f"{len(texts)} texts, batch 32, {args.threads} threads)")
        del embedder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "poolx.cli", "serve", str(directory), "--port", str(port), "--provider", "cpu",
             "--threads", str(args.threads), *args.serve_args.split()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            asyncio.run(load(port, texts[:64], 4, args.per_request))  # warm-up
            for c in [int(x) for x in args.clients.split(",")]:
                rates, lat, errors = [], [], 0
                for _ in range(args.repeat):
                    seconds, latencies, failed = asyncio.run(load(port, texts, c, args.per_request))
                    rates.append(len(texts) / seconds)
                    lat += latencies
                    errors += failed
                rate = statistics.median(rates)
                print(f"server, {c:2d} clients: {rate:7,.0f} texts/s = {rate / alone:5.1%} of the Embedder "
                      f"(median of {', '.join(f'{r:,.0f}' for r in rates)}); latency p50 "
                      f"{statistics.median(lat) * 1e3:6.1f} ms, p99 {np.percentile(lat, 99) * 1e3:6.1f} ms; {errors} errors")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
