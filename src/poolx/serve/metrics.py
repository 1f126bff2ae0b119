"""Prometheus metrics for `poolx serve`, in a registry of the app's own (prometheus_client's text format)."""

from __future__ import annotations

from typing import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    def __init__(self, in_flight: Callable[[], float] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("poolx_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("poolx_errors", "Requests answered with a 4xx or 5xx", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("poolx_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        if in_flight is not None:  # read at scrape time (this scrape included): nothing to do per request
            Gauge("poolx_requests_in_flight", "Requests being answered (all but /health)", registry=self.registry).set_function(in_flight)
        self.truncated_texts = Counter("poolx_truncated_texts", "Texts cut to the model's max_length", registry=self.registry)
        self.hist = {
            "batch_texts": Histogram("poolx_batch_texts", "Texts per model run (merged requests)", buckets=SIZE_BUCKETS, registry=self.registry),
            "batch_tokens": Histogram("poolx_batch_tokens", "Real tokens per model run", buckets=TOKEN_BUCKETS, registry=self.registry),
            "queue_seconds": Histogram("poolx_queue_seconds", "Time a request waited for its model run", buckets=LATENCY_BUCKETS, registry=self.registry),
            "run_seconds": Histogram("poolx_run_seconds", "Time of one model run", buckets=LATENCY_BUCKETS, registry=self.registry),
        }

    def observe(self, name: str, value: float) -> None:
        self.hist[name].observe(value)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def truncated(self, n: int) -> None:
        if n:
            self.truncated_texts.inc(n)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
