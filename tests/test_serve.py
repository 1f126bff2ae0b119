"""`poolx serve` as a real server on a free loopback port, called with real HTTP clients (httpx and the official
`openai` client), plus the batcher on its own."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from poolx.parity.texts import VERIFY_TEXTS
from poolx.runtime.embedder import Embedder
from poolx.serve.batcher import Batcher

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory, *args: str) -> tuple[subprocess.Popen, str]:
    """A server subprocess; its output (the access log among it) goes to a file, `proc.output` (a pipe nobody
    reads would fill up and block the server)."""
    port = free_port()
    output = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolx.cli", "serve", str(directory), "--port", str(port), "--provider", "cpu", *args],
        stdout=output, stderr=subprocess.STDOUT, text=True,
    )
    proc.output = output  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            output.seek(0)
            raise RuntimeError(f"server exited: {output.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def exported(bert_mean):
    return bert_mean


@pytest.fixture(scope="module")
def server(exported):
    proc, url = start_server(exported, "--api-key", KEY, "--max-inputs", "64")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def reference(exported):
    embedder = Embedder(exported, "cpu")
    return lambda texts: embedder.embed(texts)


TEXTS = [t for t in VERIFY_TEXTS if t][:12]


def test_openai_client_gets_the_embedders_numbers(server, reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    expected = reference(TEXTS)
    result = client.embeddings.create(model="poolx-test", input=TEXTS)  # the client asks for base64 by default
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [d.index for d in result.data] == list(range(len(TEXTS)))
    assert result.model == "poolx-test" and result.usage.prompt_tokens == result.usage.total_tokens > len(TEXTS)
    floats = client.embeddings.create(model="m", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected[0], atol=1e-5)


def test_tei_embed_gives_the_exports_vectors_normalizes_on_request_and_truncates_on_request(server, reference):
    """This export does not normalize: /embed gives its vectors as /v1/embeddings does (normalize=true asks for unit
    vectors; an export that normalizes in its graph is tests/test_st_pipeline.py's)."""
    long = VERIFY_TEXTS[-1]
    expected = reference(TEXTS)
    r = httpx.post(f"{server}/embed", json={"inputs": TEXTS}, headers=AUTH)
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32), expected, atol=1e-5)
    unit = httpx.post(f"{server}/embed", json={"inputs": TEXTS, "normalize": True}, headers=AUTH).json()
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    refused = httpx.post(f"{server}/embed", json={"inputs": [TEXTS[0], long]}, headers=AUTH)
    assert refused.status_code == 413 and "truncate=true" in refused.json()["error"]
    cut = httpx.post(f"{server}/embed", json={"inputs": [long], "truncate": True}, headers=AUTH)
    assert cut.status_code == 200
    np.testing.assert_allclose(cut.json()[0], reference([long])[0], atol=1e-5)
    unknown = httpx.post(f"{server}/embed", json={"inputs": "x", "prompt_name": "query"}, headers=AUTH)
    assert unknown.status_code == 400 and "unknown prompt 'query'" in unknown.json()["error"]


def test_info_health_and_metrics(server):
    info = httpx.get(f"{server}/info", headers=AUTH).json()
    assert info["pooling"] == "mean" and info["width"] == 32 and info["provider"] == "cpu" and info["max_length"] == 64
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}  # no key needed
    metrics = httpx.get(f"{server}/metrics", headers=AUTH).text
    for name in ("poolx_requests_total", "poolx_batch_texts_bucket", "poolx_queue_seconds_bucket", "poolx_request_seconds_bucket"):
        assert name in metrics


def test_32_concurrent_clients_zero_errors_same_numbers_merged_batches(server, reference):
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(320)]
    expected = reference(texts)
    before = _metric(server, "poolx_batch_texts_count")

    # 32 threads on one client whose pool holds 32 connections: 32 requests in flight at once (a client per
    # request would spend the test's CPU on building 320 clients).
    with httpx.Client(headers=AUTH, timeout=60, limits=httpx.Limits(max_connections=32)) as c:
        def call(i: int) -> tuple[int, int, list]:
            r = c.post(f"{server}/v1/embeddings", json={"input": [texts[i]], "encoding_format": "float"})
            return i, r.status_code, r.json()["data"][0]["embedding"] if r.status_code == 200 else r.text

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, range(len(texts))))
    assert [s for _, s, _ in results] == [200] * len(texts)
    got = np.array([e for _, _, e in sorted(results)], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    runs = _metric(server, "poolx_batch_texts_count") - before
    assert runs < len(texts)  # concurrent requests were merged into fewer model runs
    assert httpx.get(f"{server}/health").status_code == 200


def _metric(server: str, name: str, headers: dict = AUTH) -> float:
    for line in httpx.get(f"{server}/metrics", headers=headers).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("path,body,headers,status,message", [
    ("/v1/embeddings", b'{"input": "x"', AUTH, 400, "not valid JSON"),
    ("/v1/embeddings", b'{"input": 5}', AUTH, 400, "input"),
    ("/v1/embeddings", b'{"input": []}', AUTH, 400, "empty"),
    ("/v1/embeddings", b'{"input": [1, 2, 3]}', AUTH, 400, "token arrays"),
    ("/v1/embeddings", b'{"input": "x", "dimensions": 8}', AUTH, 400, "dimensions is not supported"),
    ("/v1/embeddings", b'{"input": "x", "encoding_format": "int8"}', AUTH, 400, "encoding_format"),
    ("/v1/embeddings", json.dumps({"input": ["a"] * 65}).encode(), AUTH, 413, "at most 64"),
    ("/v1/embeddings", json.dumps({"input": "a" * 100_001}).encode(), AUTH, 413, "characters"),
    ("/v1/embeddings", json.dumps({"input": "a" * (9 << 20)}).encode(), AUTH, 413, "larger than"),
    ("/v1/embeddings", b'{"input": "x"}', {}, 401, "API key"),
    ("/v1/embeddings", b'{"input": "x"}', {"Authorization": "Bearer wrong"}, 401, "API key"),
    ("/embed", b'{"inputs": null}', AUTH, 400, "inputs"),
    ("/embed", b'{"inputs": ["x"], "normalize": "yes"}', AUTH, 400, "normalize"),
    ("/embed", b'[1, 2]', AUTH, 400, ""),
    ("/nothing", b'{}', AUTH, 404, ""),
])
def test_bad_requests_get_their_4xx_and_the_server_stays_healthy(server, path, body, headers, status, message):
    r = httpx.post(f"{server}{path}", content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert message in r.text and r.headers["content-type"].startswith("application/json")
    assert httpx.get(f"{server}/health").status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits(exported):
    """Within the drain time every request held is answered; the last line counts them, the exit code is 0;
    --quiet leaves out the access log."""
    proc, url = start_server(exported, "--max-wait-ms", "50", "--quiet")
    texts = [t for t in VERIFY_TEXTS if t] * 8
    results: list[int] = []

    def call() -> None:
        r = httpx.post(f"{url}/embed", json={"inputs": texts, "truncate": True}, timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 20  # until every request has reached the server (the scrape is one in flight)
    while time.time() < deadline and _metric(url, "poolx_requests_in_flight", {}) - 1 + len(results) < 6:
        time.sleep(0.01)
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=30)
    code = proc.wait(timeout=15)
    assert time.time() - start < 10
    assert code == 0
    assert len(results) == 6 and all(s == 200 for s in results), results
    proc.output.seek(0)
    output = proc.output.read()
    held = re.search(r"^stopping: (\d+) requests? in flight get up to 8 s to finish$", output, re.M)
    assert held and 1 <= int(held.group(1)) <= 6, output
    assert re.search(rf"^stopped: {held.group(1)} requests? answered$", output, re.M), output
    assert " POST /embed " not in output  # --quiet


def test_batcher_merges_requests_and_a_failing_batch_fails_only_its_requests():
    class Enc:
        def __init__(self, n: int, bad: bool = False) -> None:
            self.ids, self.bad = [0] * n, bad

    runs: list[int] = []

    def run(encodings):
        runs.append(len(encodings))
        if any(e.bad for e in encodings):
            raise RuntimeError("model failed")
        return np.array([[len(e.ids)] for e in encodings], dtype=np.float32)

    async def main() -> None:
        batcher = Batcher(run, max_tokens=100, max_wait=0.05)
        batcher.start()
        good = [asyncio.create_task(batcher.embed([Enc(i + 1)])) for i in range(5)]
        results = await asyncio.gather(*good)
        assert [r[0, 0] for r in results] == [1, 2, 3, 4, 5] and runs == [5]  # one merged run
        big = await batcher.embed([Enc(60), Enc(60)])  # over the budget: runs alone
        assert big.shape == (2, 1)
        runs.clear()
        bad = asyncio.create_task(batcher.embed([Enc(1, bad=True)]))
        await asyncio.sleep(0.2)  # its batch has run and failed
        after = asyncio.create_task(batcher.embed([Enc(3)]))
        with pytest.raises(RuntimeError):
            await bad
        assert (await after)[0, 0] == 3
        await batcher.close()
        with pytest.raises(RuntimeError, match="shutting down"):
            await batcher.embed([Enc(1)])

    asyncio.run(main())


def test_workers_share_the_queue_run_at_once_and_close_drains_everything():
    class Enc:
        def __init__(self, n: int) -> None:
            self.ids = [0] * n

    active, peak, runs = [0], [0], []
    lock = threading.Lock()

    def run(encodings):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            runs.append(len(encodings))
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return np.array([[len(e.ids)] for e in encodings], dtype=np.float32)

    async def main() -> None:
        batcher = Batcher(run, max_tokens=1000, workers=2)
        jobs = [asyncio.create_task(batcher.embed([Enc(i + 1)])) for i in range(10)]
        await asyncio.sleep(0)  # all ten queued before a worker looks
        batcher.start()
        results = await asyncio.gather(*jobs)
        assert [r[0, 0] for r in results] == list(range(1, 11))
        assert sorted(runs) == [5, 5] and peak[0] == 2  # each idle worker took its share, both ran at once
        runs.clear()
        late = [asyncio.create_task(batcher.embed([Enc(2)])) for _ in range(7)]
        await asyncio.sleep(0)
        await batcher.close()  # everything queued before close is answered
        assert all(t.done() and t.result()[0, 0] == 2 for t in late) and sum(runs) == 7

    async def big_request() -> None:  # one request bigger than a worker's share runs in pieces on both workers
        runs.clear()
        peak[0] = 0
        batcher = Batcher(run, max_tokens=40, workers=2)  # a share is 20 tokens
        batcher.start()
        result = await batcher.embed([Enc(10 + i % 3) for i in range(8)])
        assert [r[0] for r in result] == [10 + i % 3 for i in range(8)]  # in order
        assert len(runs) >= 4 and peak[0] == 2
        await batcher.close()

    asyncio.run(main())
    asyncio.run(big_request())


def test_busy_port_and_bad_directory_are_one_line_errors(exported, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "poolx.cli", "serve", str(exported), "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot listen" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "poolx.cli", "serve", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
