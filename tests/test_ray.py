"""`poolx embed --engine ray` and `embed_dataset` on a real local Ray cluster (loopback, 2 CPUs): 4,000 texts,
every row back exactly once with the single-process `poolx embed` vectors, also after an actor is killed mid-run.
The corpus contract both engines share (blank .txt lines, ids, order, duplicate ids, bad input) is held case by
case on both in tests/test_corpus_engines.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from click.testing import Result  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from poolx.cli import app  # noqa: E402
from poolx.deploy.ray_data import actor_resources, embed_dataset  # noqa: E402
from poolx.providers import CPU, CUDA  # noqa: E402
from poolx.errors import UsageError  # noqa: E402
from poolx.parity.texts import VERIFY_TEXTS  # noqa: E402
from test_corpus import read_embeddings  # noqa: E402

ROWS = 4_000  # 4 Parquet row groups, 4 blocks of 1,024 (16 of 250 in the kill test): several blocks on both actors
ACTOR_TITLE = b"ray::MapWorker(MapBatches(_EmbedBatches))"


@pytest.fixture
def cluster(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def exported(bert_mean):
    return bert_mean


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """ROWS rows with ids r0, r1, ..., texts of all lengths (empty, truncated, non-Latin) in .parquet and .jsonl;
    and corpus.txt, line i the text of row i but every 97th line blank."""
    root = tmp_path_factory.mktemp("corpus")
    rows = [{"id": f"r{i}", "text": f"{VERIFY_TEXTS[i % len(VERIFY_TEXTS)][: 40 + i % 300]} {i}"} for i in range(ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus.parquet", row_group_size=1_000)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    lines = ["" if i % 97 == 0 else row["text"].replace("\n", " ") for i, row in enumerate(rows)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def single_process(exported, corpus):
    """id -> vector from one in-process Embedder on the same rows (`poolx embed`'s local engine is held to the
    Embedder in tests/test_corpus_engines.py)."""
    from poolx import Embedder

    table = pq.read_table(corpus / "corpus.parquet")
    vectors = Embedder(exported, "cpu").embed(table.column("text").to_pylist())
    return dict(zip(table.column("id").to_pylist(), vectors))


def poolx(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed command in a process of its own: a driver that connects to the cluster, as a user's does."""
    return subprocess.run([sys.executable, "-m", "poolx.cli", *args], capture_output=True, text=True, timeout=timeout)


def poolx_here(*args: str) -> Result:
    """The same command in the test process (the runner's driver is already connected): no Python start and Ray
    connection per call."""
    return CliRunner().invoke(app, list(args))


def check_rows(ids: list, vectors: np.ndarray, reference: dict) -> None:
    assert len(ids) == ROWS and len(set(ids)) == ROWS  # every row exactly once: none lost, none twice
    assert set(ids) == set(reference)
    expected = np.stack([reference[i] for i in ids])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_cli_on_a_cluster_gives_every_row_once_with_the_single_process_vectors(cluster, exported, corpus, single_process, tmp_path):
    out = tmp_path / "ray.parquet"
    result = poolx("embed", str(exported), "--input", str(corpus / "corpus.parquet"), "--output", str(out),
                   "--id-column", "id", "--engine", "ray", "--address", cluster, "--actors", "2", "--provider", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"wrote {ROWS} embeddings" in result.stdout
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding"]
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)
    vectors = np.array(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(ROWS, -1)
    check_rows(table.column("id").to_pylist(), vectors, single_process)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left


def test_txt_without_ids_keeps_blank_lines_and_the_input_order(cluster, exported, corpus, single_process, tmp_path):
    out = tmp_path / "ray.jsonl"
    result = poolx_here("embed", str(exported), "--input", str(corpus / "corpus.txt"), "--output", str(out),
                        "--engine", "ray", "--address", cluster, "--provider", "cpu")
    assert result.exit_code == 0, result.stderr
    assert out.is_file() and f"wrote {ROWS} embeddings to {out}" in result.stdout  # one file, as `poolx embed` writes
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == ROWS and set(rows[0]) == {"embedding"}  # a blank line is a row: row i is line i
    vectors = np.array([r["embedding"] for r in rows], dtype=np.float32)
    from poolx import Embedder

    empty = Embedder(exported, "cpu").embed([""])[0]
    blank = np.arange(ROWS) % 97 == 0
    np.testing.assert_allclose(vectors[blank], np.broadcast_to(empty, (int(blank.sum()), empty.size)), atol=1e-5)
    kept = [i for i in range(ROWS) if i % 97]
    np.testing.assert_allclose(vectors[kept], np.stack([single_process[f"r{i}"] for i in kept]), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.jsonl"]


def test_a_killed_actor_loses_and_duplicates_nothing(cluster, exported, corpus, single_process):
    ds = ray.data.read_json(str(corpus / "corpus.jsonl"), lines=True)
    ds = embed_dataset(ds, exported, actors=2, provider="cpu", batch_size=250)
    ids: list = []
    chunks: list = []
    killed, seen_at_kill = None, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        ids += batch.column("id").to_pylist()
        chunks.append(np.array(batch.column("embedding").combine_chunks().flatten(), dtype=np.float32))
        if killed is None and len(ids) >= ROWS * 3 // 16:  # mid-run: under a fifth of the rows are out
            killed, seen_at_kill = _kill_one_actor(), len(ids)
    assert killed is not None and seen_at_kill < ROWS // 2  # killed mid-run, with most rows still to come
    check_rows(ids, np.concatenate(chunks).reshape(ROWS, -1), single_process)


def _kill_one_actor() -> int:
    """SIGKILL one embedding actor's worker process (found by the title Ray gives it); returns its pid."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(ACTOR_TITLE):
            os.kill(pid, signal.SIGKILL)
            return pid
    raise AssertionError("no embedding actor process found")


def test_bad_input_is_one_line_and_writes_nothing(cluster, exported, corpus, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "out.parquet"
    start = time.time()
    result = poolx("embed", str(exported), "--input", str(corpus / "corpus.parquet"), "--output", str(out),
                   "--engine", "ray", "--address", closed)
    assert result.returncode == 2 and "cannot reach a Ray cluster" in result.stderr and time.time() - start < 60
    result = poolx_here("embed", str(exported), "--input", str(corpus / "corpus.parquet"), "--output", str(out),
                        "--engine", "ray", "--address", cluster, "--column", "body")
    assert result.exit_code == 2 and "no column 'body'" in result.stderr and "'id', 'text'" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    out.write_bytes(b"keep")
    result = poolx_here("embed", str(exported), "--input", str(corpus / "corpus.parquet"), "--output", str(out),
                        "--engine", "ray", "--address", cluster)
    assert result.exit_code == 2 and "exists" in result.stderr and out.read_bytes() == b"keep"
    result = poolx_here("embed", str(exported), "--input", str(corpus / "corpus.parquet"), "--output",
                        str(tmp_path / "out.csv"), "--engine", "ray", "--address", cluster)
    assert result.exit_code == 2 and "supported outputs are .npy, .parquet, .jsonl" in result.stderr


def test_gpu_actors_ask_for_a_gpu_and_a_cluster_without_one_is_refused(cluster, exported, corpus):
    assert actor_resources(CUDA, 1, 2, 16) == {"num_gpus": 1, "num_cpus": 1.0}
    assert actor_resources(CPU, 4, 2, 16) == {"num_gpus": 0, "num_cpus": 4.0}
    assert actor_resources(CPU, 1, 2, 2) == {"num_gpus": 0, "num_cpus": 0.5}  # one CPU left for reads and writes
    ds = ray.data.read_json(str(corpus / "corpus.jsonl"), lines=True)
    with pytest.raises(UsageError, match="has 0 GPU"):
        embed_dataset(ds, exported, provider="cuda")


def test_actors_keep_no_copy_of_the_export_and_remove_what_killed_ones_left(cluster, exported, tmp_path, monkeypatch):
    """An actor's copy of the export (/tmp/poolx-ray-PID-*) is removed as soon as its Embedder has loaded, so no
    exit of the actor or of the driver (an error, Ctrl-C, SIGTERM, a pool shut down) leaves one (they were left,
    87 MB each with MiniLM, by every failed or interrupted job); a copy left by an actor killed while loading is
    removed by the next actor on the node, and a live actor's is not. A null text is named as such. The actor
    class runs in this process here, on this test's temporary directory."""
    import tempfile

    from poolx.deploy.ray_data import _EmbedBatches

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    killed_while_loading = tmp_path / f"poolx-ray-{done.pid}-k1ll3d"
    loading_now = tmp_path / f"poolx-ray-{os.getpid()}-l0ad1n"
    for directory in (killed_while_loading, loading_now):
        directory.mkdir()
        (directory / "model.onnx").write_bytes(b"0" * 100)
    files = {name: (exported / name).read_bytes() for name in [*json.loads((exported / "manifest.json").read_text())["files"], "manifest.json"]}
    actor = _EmbedBatches([ray.put(files)], "cpu", 1, "text", "embedding", False, 32)
    assert list(tmp_path.iterdir()) == [loading_now]
    table = actor(pa.table({"text": ["a text", "another"]}))
    assert table.column_names == ["text", "embedding"] and len(table) == 2
    with pytest.raises(UsageError, match=r"^column 'text' is null in a row; every row needs a text"):
        actor(pa.table({"text": ["a text", None]}))
