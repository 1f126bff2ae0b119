"""The HTTP API over an Embedder: OpenAI's `POST /v1/embeddings`, text-embeddings-inference's `POST /embed`,
`GET /v1/models` (OpenAI's list, for clients that ask), `GET /health`, `GET /info` and `GET /metrics` (Prometheus).

Every request is validated before it reaches the model; whatever a client sends gets a 2xx or a 4xx with a JSON
error (OpenAI's error shape under /v1, TEI's elsewhere), and whatever fails inside a JSON 500 (a tokenizer's
Rust panic included). POST bodies must be `application/json` (415 otherwise: a web page's form or `text/plain`
request cannot make a key-less local server compute). Texts are tokenized on a worker thread as requests arrive,
then merged across requests by the `Batcher`. While the server stops (`Lifecycle`), new requests get a JSON 503,
and requests still held when the drain time is up are failed with one."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from poolx.errors import UsageError, first_line
from poolx.runtime.embedder import l2_normalize
from poolx.serve.batcher import Batcher
from poolx.serve.metrics import Metrics


@dataclass
class Limits:
    max_inputs: int = 2048  # texts per request (OpenAI's limit)
    max_chars: int = 100_000  # characters per text
    max_total_chars: int = 2_000_000  # characters per request
    max_body_bytes: int = 8 * 1024 * 1024  # request body (413 beyond it)
    max_batch_tokens: int = 8192  # real tokens merged into one model run
    max_wait_ms: float = 0.0  # how long an idle model waits for more requests before running a lone one
    workers: int = 1  # batches run at once (CPU: one single-threaded run per core)


class Lifecycle:
    """What the server and its app share about stopping: `draining` from SIGTERM/SIGINT on (new requests get a
    503; once the drain time is up the server cancels the requests still held, and each is answered with a 503).
    Requests other than /health that finish while draining are counted: answered (any response of their own),
    failed (the 503 at the drain timeout), refused (arrived while stopping) or lost (the client went away)."""

    def __init__(self) -> None:
        self.in_flight = 0  # requests (all but /health) being answered
        self.draining = False
        self.answered = self.failed = self.refused = self.lost = 0


class AccessLog:
    """One line per request on a stream (stderr): time, client, method, path, status, milliseconds, and texts and
    tokens for an embedding request. A plain write (stderr is line-buffered): about 3 microseconds a line."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, client: str, method: str, path: str, status: int, ms: float | None = None,
                 texts: int | None = None, tokens: int | None = None) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {client} {method} {path} {status}"
        line += f" {ms:.1f}ms" if ms is not None else " -"
        if texts is not None:
            line += f" texts={texts} tokens={tokens}"
        try:
            self.stream.write(line + "\n")
        except (OSError, ValueError):  # a closed stderr does not stop the server
            pass


class ClientError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def create_app(
    embedder: Any, *, model_name: str | None = None, api_key: str | None = None, limits: Limits | None = None,
    lifecycle: Lifecycle | None = None, access_log: AccessLog | None = None,
) -> Any:
    """A FastAPI app serving `embedder` (a poolx Embedder or anything with its interface). `lifecycle` is shared
    with the server that drains it; `access_log` (None: no log) gets a line per request."""
    limits = limits or Limits()
    life = lifecycle or Lifecycle()
    name = model_name or embedder.manifest.source["name"]
    metrics = Metrics(in_flight=lambda: life.in_flight)
    max_length = embedder.max_length
    state: dict[str, Any] = {}

    def run_model(encodings: Any) -> np.ndarray:
        return embedder.embed_encoded(encodings, batch_size=64)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher = Batcher(
            run_model, max_tokens=limits.max_batch_tokens, max_wait=limits.max_wait_ms / 1000, workers=limits.workers,
            observe=metrics.observe,
        )
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.close()  # uvicorn has already waited for in-flight requests

    app = FastAPI(title="poolx", lifespan=lifespan, docs_url=None, redoc_url=None)

    class OpenAIRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        input: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]
        model: StrictStr | None = None
        encoding_format: StrictStr = "float"
        dimensions: StrictInt | None = None
        user: StrictStr | None = None
        prompt_name: StrictStr | None = None  # poolx's extension (OpenAI clients: extra_body); default: the export's

    class EmbedRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        inputs: Union[StrictStr, list[StrictStr]]
        normalize: StrictBool | None = None  # default: what the export gives (unit vectors when it normalizes)
        truncate: StrictBool = False
        prompt_name: StrictStr | None = None

    def error_response(request: Request, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(error_body(request.url.path, message, param, kind), status_code=status)

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
        return error_response(request, exc.status, exc.message, exc.param, exc.kind)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes, metrics=metrics, lifecycle=life,
                       log=access_log)

    async def read_body(request: Request) -> bytes:
        """The body, if it is JSON, refusing chunked bodies that grow past the limit (no Content-Length to check
        up front)."""
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise ClientError(
                415, f"the body must be JSON sent as Content-Type: application/json, not {media_type or 'no Content-Type'}",
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ClientError(413, f"the request body is larger than {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(body: bytes, model: type) -> Any:
        try:
            return model.model_validate_json(body)
        except ValidationError as e:
            first = e.errors()[0]
            if first.get("type") == "json_invalid":
                raise ClientError(400, "the request body is not valid JSON") from None
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise ClientError(400, f"{where}: {first.get('msg', 'invalid value')}", where) from None

    def check_texts(texts: list[str], param: str) -> int:
        """The texts' characters in all, once the request is within the limits."""
        if not texts:
            raise ClientError(400, f"{param} is empty; send at least one text", param)
        if len(texts) > limits.max_inputs:
            raise ClientError(413, f"{param} holds {len(texts)} texts; at most {limits.max_inputs} per request", param)
        longest = max(len(t) for t in texts)
        if longest > limits.max_chars:
            raise ClientError(413, f"a text has {longest} characters; at most {limits.max_chars}", param)
        chars = sum(len(t) for t in texts)
        if chars > limits.max_total_chars:
            raise ClientError(413, f"the texts hold more than {limits.max_total_chars} characters in all", param)
        return chars

    async def embed(texts: list[str], chars: int, truncate: bool, prompt_name: str | None) -> tuple[np.ndarray, int]:
        try:
            embedder.prompt(prompt_name)
        except UsageError as e:
            raise ClientError(400, str(e), "prompt_name") from None
        if chars <= INLINE_CHARS:  # a few short texts: a thread hop costs more than tokenizing
            encodings = embedder.encode(texts, prompt_name)
        else:
            encodings = await asyncio.to_thread(embedder.encode, texts, prompt_name)
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        if cut and not truncate:
            raise ClientError(
                413, f"input {cut[0]} is longer than the model's {max_length} tokens; send truncate=true to cut it",
                "inputs", "Validation",
            )
        metrics.truncated(len(cut))
        batcher: Batcher = state["batcher"]
        if batcher.closed:
            raise ClientError(503, "the server is shutting down", kind="server_error")
        vectors = await batcher.embed(encodings)
        return vectors, sum(len(e.ids) for e in encodings)

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request) -> Response:
        body = parse(await read_body(request), OpenAIRequest)
        if isinstance(body.input, str):
            texts = [body.input]
        elif body.input and not isinstance(body.input[0], str):
            raise ClientError(400, "token arrays are not supported as input; send strings", "input")
        else:
            texts = list(body.input)
        if body.encoding_format not in ("float", "base64"):
            raise ClientError(400, "encoding_format must be 'float' or 'base64'", "encoding_format")
        if body.dimensions is not None and body.dimensions != embedder.width:
            raise ClientError(
                400, f"dimensions is not supported: this model's embeddings have {embedder.width} dimensions",
                "dimensions",
            )
        chars = check_texts(texts, "input")
        # over-long texts are cut to max_length (counted in /metrics); vectors as the export gives them
        vectors, tokens = await embed(texts, chars, truncate=True, prompt_name=body.prompt_name)
        request.scope["poolx.work"] = (len(texts), tokens)
        if body.encoding_format == "base64":
            items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            items = vectors
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)]
        return json_response({
            "object": "list", "data": data, "model": body.model or name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    @app.post("/embed")
    async def tei_embed(request: Request) -> Response:
        body = parse(await read_body(request), EmbedRequest)
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        chars = check_texts(texts, "inputs")
        if body.normalize is False and embedder.normalized:
            raise ClientError(400, "this model's graph L2-normalizes its embeddings; normalize=false cannot undo it", "normalize")
        vectors, tokens = await embed(texts, chars, truncate=body.truncate, prompt_name=body.prompt_name)
        request.scope["poolx.work"] = (len(texts), tokens)
        if body.normalize and not embedder.normalized:
            vectors = l2_normalize(vectors.copy())  # a view of the batch's array: leave that as it is
        return json_response(vectors)

    @app.get("/health")
    async def health() -> Response:
        batcher = state.get("batcher")
        if batcher is None or batcher.closed or life.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    model_card = {"id": name, "object": "model", "created": _timestamp(embedder.manifest.created), "owned_by": "poolx"}

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [model_card]})

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> Response:
        if model != name:
            return JSONResponse(error_body("/v1/", f"no model {model!r}; this server serves {name!r}", "model"), status_code=404)
        return JSONResponse(model_card)

    @app.get("/info")
    async def info() -> Response:
        m = embedder.manifest
        return JSONResponse({
            "model": name, "pooling": m.pooling["name"], "pooling_options": m.pooling.get("options", {}),
            "width": embedder.width, "max_length": max_length, "provider": embedder.provider.description,
            "normalized": embedder.normalized, "prompts": embedder.prompts, "default_prompt_name": embedder.default_prompt_name,
            "precision": m.variant.precision.name, "optimized": m.variant.fused, "variant": m.variant.label,
            "limits": limits.__dict__,
        })

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


INLINE_CHARS = 4096  # requests up to this many characters are tokenized on the event loop (tens of microseconds)


def _timestamp(created: str) -> int:
    """The export's creation time (the manifest's ISO string) as Unix seconds, 0 when it has none."""
    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except (TypeError, ValueError):
        return 0


def error_body(path: str, message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    """An error in OpenAI's shape under /v1, in text-embeddings-inference's elsewhere."""
    if path.startswith("/v1/"):
        return {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return {"error": message, "error_type": kind}


ENDPOINTS = ("/v1/embeddings", "/embed", "/health", "/info", "/metrics", "/v1/models")


class Guard:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream per request): bearer-token
    auth (all but /health), the Content-Length limit, a JSON 500 for anything unexpected (a BaseException too: a
    Rust panic from the tokenizer is one), a JSON 503 while stopping, the stop counts, request metrics and the
    access log."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, metrics: Metrics,
                 lifecycle: Lifecycle, log: AccessLog | None = None) -> None:
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics
        self.life, self.log = lifecycle, log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        headers = dict(scope["headers"])
        life = self.life
        counted = path != "/health"
        status = 500
        started = False
        outcome = "answered"
        if counted:
            life.in_flight += 1

        async def answer(code: int, message: str, kind: str = "invalid_request_error", extra: tuple = ()) -> None:
            body = orjson_dumps(error_body(path, message, kind=kind))
            await send({"type": "http.response.start", "status": code, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
            await send({"type": "http.response.body", "body": body})

        async def tracked(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        close = ((b"connection", b"close"),)  # for answers given without reading the body
        try:
            if counted and (life.draining or scope.get("poolx.overflow")):
                status, outcome = 503, "refused"
                why = "the server is shutting down" if life.draining else "the server is at its connection limit"
                await self.discard_body(receive)  # (closing on an unread body would reset the connection)
                return await answer(503, f"{why}; retry", "server_error", close)
            if self.api_key and path != "/health":
                header = headers.get(b"authorization", b"")
                token = header[7:] if header[:7].lower() == b"bearer " else b""
                if not hmac.compare_digest(token, self.api_key.encode()):
                    status = 401
                    return await answer(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                        "authentication_error", ((b"www-authenticate", b"Bearer"), *close))
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                status = 413
                return await answer(413, f"the request body is larger than {self.max_body_bytes} bytes", extra=close)
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:  # the drain time is up (or a second Ctrl-C): fail the request explicitly
            status, outcome = 503, "failed"
            if not started:
                await answer(503, "the server is shutting down and could not finish this request in its drain time; retry",
                             "server_error", close)
        except ClientDisconnect:  # the client went away, or the server cut a body that did not come in time
            status, outcome = scope.get("poolx.timed_out", 499), "lost"
        except BaseException as e:  # a bug or a model failure: the client gets a JSON 500, the server lives on
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            status = 500
            logging.getLogger("poolx.serve").error("request to %s failed", path, exc_info=e)
            if not started:
                await answer(500, f"internal error: {type(e).__name__}: {first_line(e)}", "server_error")
        finally:
            seconds = time.perf_counter() - start
            if counted:
                life.in_flight -= 1
                if life.draining:
                    setattr(life, outcome, getattr(life, outcome) + 1)
            self.metrics.request(endpoint, status, seconds)
            if self.log is not None:
                client = scope.get("client")
                work = scope.get("poolx.work") or (None, None)
                self.log(f"{client[0]}:{client[1]}" if client else "-", scope["method"], path, status,
                         seconds * 1000, *work)

    async def discard_body(self, receive: Any) -> None:
        """Read a request's body to its end (up to the body limit; the connection's body deadline bounds the wait)
        so that the answer is not lost to a reset when the connection closes."""
        size = 0
        while size <= self.max_body_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                return


def orjson_dumps(payload: Any) -> bytes:
    """JSON bytes, numpy arrays written directly (orjson when installed: ~10x faster than json for float lists)."""
    try:
        import orjson

        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    except ImportError:
        import json

        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return json.dumps(plain(payload)).encode()


def json_response(payload: Any) -> Any:
    return Response(orjson_dumps(payload), media_type="application/json")
