"""poolx.textio: reading corpora (.txt, .jsonl, .csv/.tsv, .parquet) and writing embeddings (.npy, .parquet,
.jsonl) all or nothing. Fast; no model needed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from poolx.errors import PoolxError, UsageError
from poolx.textio import Corpus, EmbeddingWriter, check_output, read_corpus, read_embeddings

UNICODE = [
    "hello world", "你好，世界", "مرحبا بالعالم", "emoji 🎉👩🏽‍💻 ok", 'quotes " and , commas', "tab\there",
]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def refused(path: Path, *needles: str, **kwargs) -> str:
    with pytest.raises(UsageError) as error:
        read_corpus(path, **kwargs)
    message = one_line(error)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def write_parquet(path: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def jsonl(path: Path, objects: list) -> Path:
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ reading: txt


def test_txt_round_trip_unicode(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(t.replace("\t", " ") for t in UNICODE) + "\n", encoding="utf-8")
    corpus = read_corpus(path)
    assert isinstance(corpus, Corpus)
    assert corpus.texts == [t.replace("\t", " ") for t in UNICODE]
    assert corpus.ids is None and corpus.format == "txt" and corpus.source == path and len(corpus) == len(UNICODE)


def test_txt_crlf_bom_blank_lines_kept_and_no_trailing_text(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\n\r\nthird\r\n\n  \nlast")
    assert read_corpus(path).texts == ["first", "", "third", "", "  ", "last"]
    path.write_bytes(b"a\nb\n")
    assert read_corpus(path).texts == ["a", "b"]  # the final newline does not add a text


def test_txt_splits_on_newline_only(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\u2028b\x0cc\rd\ne", encoding="utf-8", newline="")
    assert read_corpus(path).texts == ["a\u2028b\x0cc\rd", "e"]


def test_txt_refuses_columns(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\n", encoding="utf-8")
    refused(path, "--column", ".txt", column="body")
    refused(path, "--id-column", ".txt", id_column="id")


# ------------------------------------------------------------------------------------------------ reading: jsonl


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_round_trip_with_ids_and_empty_strings(tmp_path, suffix):
    objects = [{"id": i, "text": t, "other": [1]} for i, t in enumerate(UNICODE)] + [{"id": 99, "text": ""}]
    path = jsonl(tmp_path / f"c{suffix}", objects)
    corpus = read_corpus(path, id_column="id")
    assert corpus.texts == UNICODE + [""]
    assert corpus.ids == list(range(len(UNICODE))) + [99]
    assert corpus.format == "jsonl"


def test_jsonl_blank_lines_skipped_crlf_bom_and_other_column(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = ['{"body": "a", "key": "x"}', "", "   ", '{"body": "b\\nc", "key": "y"}']
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n")
    corpus = read_corpus(path, column="body", id_column="key")
    assert corpus.texts == ["a", "b\nc"] and corpus.ids == ["x", "y"]


def test_jsonl_missing_field_lists_that_lines_fields(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"body": "b", "lang": "en"}])
    refused(path, "line 2", "'text'", "'body', 'lang'", "--column")


def test_jsonl_null_field_counts_as_missing(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"text": None, "body": "x"}])
    refused(path, "line 1", "'text'", "null", "'body'")


def test_jsonl_non_string_text(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": 3}])
    refused(path, "line 2", "'text'", "not a string")


@pytest.mark.parametrize("line", ['["a list"]', '"just a string"', "3"])
def test_jsonl_non_object_line(tmp_path, line):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + "\n", encoding="utf-8")
    refused(path, "line 3", "not an object")


def test_jsonl_invalid_json(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    refused(path, "line 2", "not valid JSON")


def test_jsonl_ids_missing_duplicate_or_mixed(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a", "id": "x"}, {"text": "b"}])
    refused(path, "line 2", "'id'", "--id-column", id_column="id")
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a", "id": "x"}, {"text": "b", "id": "y"}, {"text": "c", "id": "x"}])
    refused(path, "'x'", "twice", "line 1", "line 3", id_column="id")
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a", "id": 1}, {"text": "b", "id": "1"}])
    refused(path, "line 2", "ids must all be numbers", id_column="id")
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a", "id": [1]}])
    refused(path, "line 1", "id", "array", id_column="id")


def test_jsonl_unpaired_surrogate(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    refused(path, "line 1", "surrogate")


# ------------------------------------------------------------------------------------------------ reading: csv/tsv


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_round_trip_unicode_multiline_and_empty_cells(tmp_path, suffix, delimiter):
    texts = UNICODE + ["two\nlines", ""]
    rows = [["id", "text", "extra"]] + [[f"id{i}", t, "x"] for i, t in enumerate(texts)]
    path = write_csv(tmp_path / f"c{suffix}", rows, delimiter)
    corpus = read_corpus(path, id_column="id")
    assert corpus.texts == texts
    assert corpus.ids == [f"id{i}" for i in range(len(texts))]
    assert corpus.format == suffix[1:]


def test_csv_crlf_bom_blank_lines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfbody,n\r\nalpha,1\r\n\r\n\"\",2\r\n\"\xe4\xbd\xa0\xe5\xa5\xbd\",3\r\n")
    assert read_corpus(path, column="body").texts == ["alpha", "", "你好"]


def test_csv_missing_column_lists_available(tmp_path):
    path = write_csv(tmp_path / "c.csv", [["title", "body"], ["a", "b"]])
    refused(path, "'text'", "'title', 'body'", "--column")
    refused(path, "'key'", "'title', 'body'", "--id-column", column="body", id_column="key")


def test_csv_ragged_row_names_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,n\na,1\nb,2,3\n", encoding="utf-8")
    refused(path, "line 3", "3 fields", "header has 2")


@pytest.mark.parametrize("content,line", [('text\nok\n"unclosed\nmore\n', 4), ('text\nok\n"a"b\n', 3)])
def test_csv_bad_quoting_names_line(tmp_path, content, line):
    path = tmp_path / "c.csv"
    path.write_text(content, encoding="utf-8")
    refused(path, f"line {line}", "not valid CSV")


def test_tsv_field_starting_with_a_quote(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text('text\n"Hi" she said\n', encoding="utf-8")
    message = refused(path, "line 2", "not valid TSV", "doubled")
    assert "\t" not in message


def test_csv_duplicate_and_empty_ids(tmp_path):
    path = write_csv(tmp_path / "c.csv", [["id", "text"], ["a", "x"], ["b", "y"], ["a", "z"]])
    refused(path, "'a'", "twice", "line 2", "line 4", id_column="id")
    path = write_csv(tmp_path / "c.csv", [["id", "text"], ["a", "x"], ["", "y"]])
    refused(path, "line 3", "empty", id_column="id")


def test_csv_header_only_has_no_texts(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text\n", encoding="utf-8")
    refused(path, "has no texts")


def test_csv_long_field(tmp_path):
    long = "x" * 300_000  # over the csv module's default field size limit
    path = write_csv(tmp_path / "c.csv", [["text"], [long]])
    before = csv.field_size_limit()
    assert read_corpus(path).texts == [long]
    assert csv.field_size_limit() == before


# ------------------------------------------------------------------------------------------------ reading: parquet


def test_parquet_round_trip_with_ids(tmp_path):
    texts = UNICODE + [""]
    ids = list(range(10, 10 + len(texts)))
    path = write_parquet(tmp_path / "c.parquet", text=texts, id=ids, other=[1.0] * len(texts))
    corpus = read_corpus(path, id_column="id")
    assert corpus.texts == texts and corpus.ids == ids and corpus.format == "parquet"


def test_parquet_large_string_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": pa.array(["a", "b"], type=pa.large_string())}), path)
    assert read_corpus(path, column="body").texts == ["a", "b"]


def test_parquet_missing_column_lists_available(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", title=["a"], body=["b"])
    refused(path, "'text'", "'title', 'body'", "--column")


def test_parquet_null_names_row(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", text=["a", "b", None, None])
    refused(path, "null", "row 2")
    path = write_parquet(tmp_path / "c.parquet", text=["a", "b"], id=["x", None])
    refused(path, "'id'", "null", "row 1", id_column="id")


def test_parquet_non_string_column_and_duplicate_ids(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", text=[1, 2])
    refused(path, "'text'", "int64", "not string")
    path = write_parquet(tmp_path / "c.parquet", text=["a", "b", "c"], id=[7, 8, 7])
    refused(path, "7", "twice", "row 0", "row 2", id_column="id")


def test_parquet_not_a_parquet_file(tmp_path):
    path = tmp_path / "c.parquet"
    path.write_text("text\nhello\n", encoding="utf-8")
    refused(path, "not a readable Parquet file")


def test_parquet_empty_has_no_texts(tmp_path):
    import pyarrow as pa

    path = write_parquet(tmp_path / "c.parquet", text=pa.array([], type=pa.string()))
    refused(path, "has no texts")


# ------------------------------------------------------------------------------------------------ reading: shared


@pytest.mark.parametrize("name,content,line,offset", [
    ("c.txt", b"ok\nstill ok\ncaf\xe9\n", 3, 15),
    ("c.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', 2, 27),
    ("c.csv", b"text\na\ncaf\xe9\n", 3, 10),
    ("c.txt", b"\xef\xbb\xbfok\n\xff", 2, 6),
])
def test_non_utf8_names_line_and_offset(tmp_path, name, content, line, offset):
    path = tmp_path / name
    path.write_bytes(content)
    refused(path, "not UTF-8", f"line {line}", f"byte offset {offset}", "iconv")


@pytest.mark.parametrize("name,content", [
    ("e.txt", b""), ("e.txt", b"\xef\xbb\xbf"), ("e.jsonl", b""), ("e.jsonl", b"\n  \n"), ("e.csv", b""),
    ("e.tsv", b"text\n"),
])
def test_empty_inputs_have_no_texts(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    refused(path, str(path), "has no texts")


def test_unknown_extension_missing_file_and_directory(tmp_path):
    path = tmp_path / "c.xlsx"
    path.write_bytes(b"x")
    refused(path, "'.xlsx'", ".txt", ".jsonl", ".csv", ".tsv", ".parquet")
    refused(tmp_path / "noext", "no extension", ".txt")
    refused(tmp_path / "missing.txt", "no such file")
    (tmp_path / "dir.txt").mkdir()
    refused(tmp_path / "dir.txt", "is a directory")


def test_extension_is_case_insensitive(tmp_path):
    path = tmp_path / "C.TXT"
    path.write_text("a\n", encoding="utf-8")
    assert read_corpus(str(path)).texts == ["a"]


# ------------------------------------------------------------------------------------------------ writing


def vectors(count: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((count, width)) * 0.05).astype(np.float32)
    # awkward float32 values: signed zero, denormals, extremes, values with many digits
    special = np.array([-0.0, 0.0, 1e-45, -1.4e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 0.1, 1 / 3, 1e20,
                        123456.79, 16777217.0], dtype=np.float32)
    data.flat[: min(special.size, data.size)] = special[: data.size]
    return data


def write_all(path: Path, data: np.ndarray, block: int = 3, **kwargs) -> None:
    with EmbeddingWriter(path, width=data.shape[1], count=data.shape[0], **kwargs) as writer:
        for start in range(0, data.shape[0], block):
            writer.write(start, data[start:start + block])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == np.float32 and b.dtype == np.float32 and a.shape == b.shape and np.array_equal(
        a.view(np.uint32), b.view(np.uint32))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
@pytest.mark.parametrize("ids", [None, ["a", "b", "你好", "d", "e", "f", "g"], [5, 4, 3, 2, 1, 0, -1]])
def test_writer_round_trip_bits_exact(tmp_path, suffix, ids):
    data = vectors(7, 5)
    path = tmp_path / f"out{suffix}"
    write_all(path, data, ids=ids)
    got_ids, got = read_embeddings(path)
    assert same_bits(got, data)
    assert got_ids == (ids if suffix != ".npy" else None)
    assert leftovers(tmp_path) == []


def test_npy_is_a_plain_array(tmp_path):
    data = vectors(10, 4)
    write_all(tmp_path / "out.npy", data)
    loaded = np.load(tmp_path / "out.npy")
    assert loaded.dtype == np.float32 and same_bits(loaded, data)


def test_parquet_schema_and_row_groups(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import poolx.textio as textio

    monkeypatch.setattr(textio, "_PARQUET_GROUP_BYTES", 4 * 4 * 5)  # 5 rows of width 4 per row group
    data = vectors(12, 4)
    texts = [f"t{i}" for i in range(12)]
    write_all(tmp_path / "out.parquet", data, block=2, ids=[f"i{i}" for i in range(12)], texts=texts)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "text", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.column("text").to_pylist() == texts
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [6, 6]  # flushed at >= 5 rows
    assert same_bits(read_embeddings(tmp_path / "out.parquet")[1], data)


def test_jsonl_output_is_compact_valid_json(tmp_path):
    data = vectors(4, 3)
    write_all(tmp_path / "out.jsonl", data, ids=[1, 2, 3, 4], texts=["a", "你好", "c", "d\ne"])
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    objects = [json.loads(line) for line in lines]
    assert [o["id"] for o in objects] == [1, 2, 3, 4]
    assert objects[1]["text"] == "你好" and objects[3]["text"] == "d\ne"
    assert '"embedding":[-0.0,0.0,1e-45]' in lines[0]
    assert "0.1," in lines[2] or "0.1]" in lines[2]  # shortest float32 form, not 0.10000000149011612
    assert same_bits(np.array([o["embedding"] for o in objects], dtype=np.float32), data)


def test_jsonl_floats_round_trip_many_random_bit_patterns(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 2**32, size=(2000, 64), dtype=np.uint64).astype(np.uint32).view(np.float32)
    data[~np.isfinite(data)] = 1.5
    write_all(tmp_path / "out.jsonl", data, block=500)
    assert same_bits(read_embeddings(tmp_path / "out.jsonl")[1], data)


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_writer_accepts_numpy_ids_and_sizes_and_empty_blocks(tmp_path, suffix):
    data = vectors(3, 2)
    with EmbeddingWriter(tmp_path / f"out{suffix}", width=np.int64(2), count=np.int64(3),
                         ids=np.array([10, 20, 30])) as writer:
        writer.write(0, data[:0])
        writer.write(0, data.astype(np.float64))
        writer.write(3, data[:0])
    ids, got = read_embeddings(tmp_path / f"out{suffix}")
    assert same_bits(got, data) and ids == (None if suffix == ".npy" else [10, 20, 30])


def test_writer_keeps_umask_permissions(tmp_path):
    write_all(tmp_path / "out.npy", vectors(2, 2))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.npy").stat().st_mode & 0o777 == 0o666 & ~mask


# ------------------------------------------------------------------------------------------------ atomicity


class Boom(Exception):
    pass


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_exception_mid_write_leaves_nothing(tmp_path, suffix, error):
    data = vectors(6, 3)
    path = tmp_path / f"out{suffix}"
    with pytest.raises(error):
        with EmbeddingWriter(path, width=3, count=6, ids=list(range(6))) as writer:
            writer.write(0, data[:3])
            assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].startswith(f".out{suffix}.tmp-")
            raise error()
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_exception_leaves_existing_output_byte_identical(tmp_path, suffix, error):
    path = tmp_path / f"out{suffix}"
    write_all(path, vectors(2, 3, seed=5))
    before = path.read_bytes()
    with pytest.raises(error):
        with EmbeddingWriter(path, width=3, count=6, force=True) as writer:
            writer.write(0, vectors(6, 3)[:4])
            raise error()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_too_few_rows_raises_and_leaves_nothing(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    with pytest.raises(RuntimeError, match="4 of 6 rows"):
        with EmbeddingWriter(path, width=3, count=6) as writer:
            writer.write(0, vectors(4, 3))
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_existing_output(tmp_path):
    path = tmp_path / "out.npy"
    write_all(path, vectors(2, 3, seed=5))
    write_all(path, vectors(4, 3), force=True)
    assert same_bits(read_embeddings(path)[1], vectors(4, 3))


def test_rows_out_of_order_or_too_many_are_internal_errors(tmp_path):
    path = tmp_path / "out.npy"
    with pytest.raises(RuntimeError, match="in order"):
        with EmbeddingWriter(path, width=3, count=6) as writer:
            writer.write(0, vectors(2, 3))
            writer.write(3, vectors(2, 3))
    with pytest.raises(RuntimeError, match="past the 6 rows"):
        with EmbeddingWriter(path, width=3, count=6) as writer:
            writer.write(0, vectors(7, 3))
    with pytest.raises(RuntimeError, match=r"shape \(n, 3\)"):
        with EmbeddingWriter(path, width=3, count=6) as writer:
            writer.write(0, vectors(2, 4))
    assert list(tmp_path.iterdir()) == []


def test_non_finite_vectors_refused(tmp_path):
    data = vectors(4, 3)
    data[2, 1] = np.nan
    with pytest.raises(PoolxError, match="row 2 contains NaN or inf"):
        write_all(tmp_path / "out.jsonl", data, block=4)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ check_output


def test_existing_output_refused_before_any_work(tmp_path):
    path = tmp_path / "out.npy"
    path.write_bytes(b"precious")
    with pytest.raises(UsageError) as error:
        check_output(path)
    assert "exists" in one_line(error) and "--force" in str(error.value)
    with pytest.raises(UsageError, match="exists"):
        EmbeddingWriter(path, width=3, count=2)
    assert path.read_bytes() == b"precious" and leftovers(tmp_path) == []
    assert check_output(path, force=True) == path


def test_check_output_refusals(tmp_path):
    def message(*args, **kwargs) -> str:
        with pytest.raises(UsageError) as error:
            check_output(*args, **kwargs)
        return one_line(error)

    text = message(tmp_path / "out.csv")
    assert "'.csv'" in text and ".npy" in text and ".parquet" in text and ".jsonl" in text
    assert "does not exist" in message(tmp_path / "nope" / "out.npy")
    (tmp_path / "d.npy").mkdir()
    assert "is a directory" in message(tmp_path / "d.npy")
    corpus = jsonl(tmp_path / "c.jsonl", [{"text": "a"}])
    assert "input file" in message(corpus, force=True, input_path=corpus)
    assert "input file" in message(tmp_path / "." / "c.jsonl", force=True, input_path=str(corpus))
    assert "input file" in message(tmp_path / "new.jsonl", input_path=tmp_path / "new.jsonl")
    assert check_output(tmp_path / "other.jsonl", input_path=corpus) == tmp_path / "other.jsonl"
    assert not (tmp_path / "nope").exists()


def test_read_embeddings_refusals(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_embeddings(tmp_path / "missing.npy")
    with pytest.raises(UsageError, match="not an embeddings file"):
        read_embeddings(tmp_path / "x.csv")
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(UsageError, match="not float32"):
        read_embeddings(tmp_path / "x.npy")


def test_import_stays_light():
    code = "import sys, poolx.textio; print([m for m in ('numpy', 'pyarrow', 'torch') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
