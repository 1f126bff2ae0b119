"""The corpus contract of `poolx embed`, held on both engines with the same cases: the local process and
`--engine ray` (a local Ray cluster on loopback, 2 CPUs; skipped without the ray extra). Output row i is input
line i for .txt (blank lines are empty texts), ids are carried, the order is kept without ids, duplicate ids are
refused even past the first batch, bad input is one line and exit 2, and nothing is left half-written.

The command runs in the test process (Typer's runner: the same parsing, engine and error mapping, without a Python
start and a Ray connection per case; the Ray engine drives the module's cluster). The installed console script is
run as a subprocess on both engines in tests/test_cli.py and tests/test_ray.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from poolx.cli import app

from test_corpus import read_embeddings

pytestmark = pytest.mark.xdist_group("ray")  # on the worker of tests/test_ray.py: one Ray cluster at a time



@pytest.fixture(params=["local", "ray"])
def engine(request) -> list[str]:
    """The command-line options that choose the engine."""
    if request.param == "local":
        return ["--engine", "local"]
    return ["--engine", "ray", "--address", request.getfixturevalue("ray_cluster"), "--actors", "1"]


@pytest.fixture(scope="module")
def reference(bert_mean):
    """text -> the Embedder's vector for it (one process, CPU)."""
    from poolx import Embedder

    embedder = Embedder(bert_mean, "cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return embedder.embed(texts)

    return embed


def poolx(*args: str) -> Result:
    return CliRunner().invoke(app, ["embed", *args, "--provider", "cpu"])


def one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_txt_blank_lines_are_rows_in_order(engine, bert_mean, reference, tmp_path):
    lines = ["first line", "", "third, after a blank", "", "  ", "emoji 🎉 and 你好", "", "last"]
    src = tmp_path / "in.txt"
    src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\n")  # BOM, CRLF, a blank line at the end
    out = tmp_path / "out.npy"
    result = poolx(str(bert_mean), "-i", str(src), "-o", str(out), *engine)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {len(lines) + 1} embeddings" in result.stdout
    ids, vectors = read_embeddings(out)
    assert ids is None and vectors.shape[0] == len(lines) + 1  # row i is line i
    np.testing.assert_allclose(vectors, reference(lines + [""]), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy"]


def test_ids_are_carried_and_order_is_kept_without_them(engine, bert_mean, reference, tmp_path):
    texts = [f"text number {i} " + "word " * (i % 13) for i in range(300)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"key": 1000 - i, "body": t}) + "\n" for i, t in enumerate(texts)))
    expected = reference(texts)
    out = tmp_path / "ids.parquet"
    result = poolx(str(bert_mean), "-i", str(src), "-o", str(out), "--column", "body", "--id-column", "key", *engine)
    assert result.exit_code == 0, result.stderr
    ids, vectors = read_embeddings(out)
    assert sorted(ids) == sorted(1000 - i for i in range(300))  # every id once; the Ray engine may reorder them
    np.testing.assert_allclose(vectors, expected[[1000 - k for k in ids]], atol=1e-5)
    out = tmp_path / "ordered.jsonl"
    result = poolx(str(bert_mean), "-i", str(src), "-o", str(out), "--column", "body", *engine)
    assert result.exit_code == 0, result.stderr
    ids, vectors = read_embeddings(out)
    assert ids is None
    np.testing.assert_allclose(vectors, expected, atol=1e-5)  # row i is input row i


def test_a_duplicate_id_past_the_first_batch_is_refused(engine, bert_mean, tmp_path):
    rows = [["id", "text"]] + [[f"d{i}", f"text {i}"] for i in range(5000)] + [["d17", "again"]]
    src = tmp_path / "in.csv"
    src.write_text("\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    result = poolx(str(bert_mean), "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "--id-column", "id", *engine)
    one_line_error(result, "'d17' twice (line 19 and line 5002)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no output, no temporary file


@pytest.mark.parametrize("content,args,needles", [
    (b"fine\n" * 5000 + b"caf\xe9\n", [], ["not UTF-8", "line 5001", "byte offset 25003"]),
    (b'{"text": "x"}\n', ["--column", "body"], ["line 1 has no field 'body'", "'text'"]),
    (b'{"text": "x"}\n' * 5000 + b'{"text": null}\n', [], ["line 5001 has no field 'text' (it is null)"]),
], ids=["not-utf8-deep-in-the-file", "missing-field", "null-text-deep-in-the-file"])
def test_bad_input_is_one_line_exit_2_and_no_output(engine, bert_mean, tmp_path, content, args, needles):
    src = tmp_path / ("in.jsonl" if content.startswith(b"{") else "in.txt")
    src.write_bytes(content)
    result = poolx(str(bert_mean), "-i", str(src), "-o", str(tmp_path / "out.parquet"), *args, *engine)
    one_line_error(result, *needles)
    assert list(tmp_path.iterdir()) == [src]
