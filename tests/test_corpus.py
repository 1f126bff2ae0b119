"""poolx.corpus: reading corpora (.txt, .jsonl/.ndjson/.json, .csv/.tsv, .parquet) in streamed batches, writing
embeddings (.npy, .parquet, .jsonl) all or nothing, and `embed_file`. Fast; no model needed (a stand-in Embedder).
The same contract on both engines, with a real export: tests/test_corpus_engines.py."""

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
from poolx.corpus import (
    Batch, Corpus, CorpusReader, EmbeddingWriter, check_output, embed_file, open_corpus, read_corpus,
)

# 7.038531e-26: the shortest decimal of this float32 reads back through a float64 as its neighbour (double rounding);
# with its negative, the only such float32 (benchmarks/corpus_memory.py --float32-check tries all 2**32)
HARD_FLOAT32_BITS = 0x15AE43FD

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


# ------------------------------------------------------------------------------------------------ reading: streaming


def test_batches_stream_in_order_across_batch_boundaries(tmp_path):
    path = tmp_path / "c.txt"
    lines = [f"t{i}" if i % 7 else "" for i in range(23)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open_corpus(path, batch_rows=5) as reader:
        assert isinstance(reader, CorpusReader) and reader.total == 23 and reader.format == "txt"
        batches = list(reader)
    assert all(isinstance(b, Batch) for b in batches)
    assert [b.start for b in batches] == [0, 5, 10, 15, 20] and [len(b.texts) for b in batches] == [5, 5, 5, 5, 3]
    assert [t for b in batches for t in b.texts] == lines and all(b.ids is None for b in batches)
    assert reader.rows == 23
    with pytest.raises(RuntimeError, match="once"):
        list(reader)


@pytest.mark.parametrize("content,total", [(b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n", 2), (b"\xef\xbb\xbfa", 1)])
def test_txt_total_counts_texts(tmp_path, content, total):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with open_corpus(path) as reader:
        assert reader.total == total == sum(len(b.texts) for b in reader)


def test_problems_in_the_first_batch_are_raised_by_open_later_ones_while_streaming(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"text": "a"}] * 3)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"text": 5}\n')
    with pytest.raises(UsageError, match="line 4"):  # in the first batch: raised before any work
        open_corpus(path, batch_rows=10)
    reader = open_corpus(path, batch_rows=2)  # the first batch is fine
    with pytest.raises(UsageError) as error:
        list(reader)
    assert "line 4" in one_line(error) and "not a string" in str(error.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_duplicate_ids_across_batches_name_both_places(tmp_path, suffix):
    ids = [f"k{i}" for i in range(40)] + ["k3"]
    texts = [f"t{i}" for i in range(41)]
    if suffix == ".jsonl":
        path, first, second = jsonl(tmp_path / "c.jsonl", [{"id": i, "text": t} for i, t in zip(ids, texts)]), \
            "line 4", "line 41"
    elif suffix == ".csv":
        path, first, second = write_csv(tmp_path / "c.csv", [["id", "text"]] + list(map(list, zip(ids, texts)))), \
            "line 5", "line 42"
    else:
        path, first, second = write_parquet(tmp_path / "c.parquet", id=ids, text=texts), "row 3", "row 40"
    reader = open_corpus(path, id_column="id", batch_rows=8)
    with pytest.raises(UsageError) as error:
        list(reader)
    message = one_line(error)
    assert "'k3' twice" in message and f"({first} and {second})" in message


def test_ids_that_share_a_key_are_not_duplicates(tmp_path):
    # hash(-1) == hash(-2) and hash(2**61 - 1) == hash(0) in CPython; 1 and 1.0 are the same id (as in a dict)
    ids = [-1, -2, 2**61 - 1, 0, 2**63, -(2**63), 2**64 - 1, -1.5, 7]
    path = jsonl(tmp_path / "c.jsonl", [{"id": v, "text": str(v)} for v in ids])
    assert read_corpus(path, id_column="id").ids == ids
    path = jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "a"}, {"id": 1.0, "text": "b"}])
    refused(path, "twice", "line 1", "line 2", id_column="id")


def test_many_unique_ids_stream(tmp_path):
    ids = list(range(20_000))
    path = write_parquet(tmp_path / "c.parquet", id=ids, text=[str(i) for i in ids])
    assert read_corpus(path, id_column="id").ids == ids


def test_json_suffix_is_json_lines(tmp_path):
    path = jsonl(tmp_path / "c.json", [{"text": "a"}, {"text": ""}])
    assert read_corpus(path).texts == ["a", ""] and read_corpus(path).format == "jsonl"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    refused(path, "line 1", "array", "JSON Lines")
    path.write_text('[\n  {"text": "a"}\n]\n', encoding="utf-8")
    refused(path, "line 1", "not valid JSON", "JSON Lines")


def test_parquet_directory_of_parts_in_name_order(tmp_path):
    directory = tmp_path / "corpus.parquet"
    directory.mkdir()
    write_parquet(directory / "part-1.parquet", text=["c", "d"], id=[3, 4])
    write_parquet(directory / "part-0.parquet", text=["a", "b"], id=[1, 2])
    (directory / "_SUCCESS").write_bytes(b"")
    with open_corpus(directory, id_column="id") as reader:
        assert reader.total == 4
        assert [(b.texts, b.ids) for b in reader] == [(["a", "b"], [1, 2]), (["c", "d"], [3, 4])]
    write_parquet(directory / "part-2.parquet", text=["e"], id=[1])
    refused(directory, "id 1 twice", "row 0 and row 4", id_column="id")
    write_parquet(directory / "part-2.parquet", body=["e"])
    refused(directory, "part-2.parquet", "no column 'text'")
    empty = tmp_path / "empty.parquet"
    empty.mkdir()
    refused(empty, "without .parquet files")


def test_parquet_row_groups_stream(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    texts = [f"t{i}" for i in range(100)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=30)
    with open_corpus(path, batch_rows=16) as reader:
        sizes = [len(b.texts) for b in reader]
    assert sum(sizes) == 100 and max(sizes) <= 16
    path = write_parquet(tmp_path / "n.parquet", text=texts[:50] + [None] + texts[51:])
    reader = open_corpus(path, batch_rows=16)
    with pytest.raises(UsageError, match="null at row 50"):
        list(reader)


def test_tables_give_one_id_type_for_every_batch(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"t{i}"} for i in range(5)])
    with open_corpus(path, id_column="id", batch_rows=2) as reader:
        tables = list(reader.tables())
    assert [t.num_rows for t in tables] == [2, 2, 1]
    assert all(t.schema == tables[0].schema for t in tables) and tables[0].column_names == ["text", "id"]
    path = jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "a"}, {"id": 1.5, "text": "b"}])
    with open_corpus(path, id_column="id", batch_rows=1) as reader:
        with pytest.raises(UsageError) as error:
            list(reader.tables())
    assert "one Arrow column" in one_line(error)


# ------------------------------------------------------------------------------------------------ writing


def read_embeddings(path: Path) -> tuple:
    """Read a file `EmbeddingWriter` wrote: (ids, or None when it has none; a float32 (rows, width) array). Other
    test modules import it from here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        assert array.ndim == 2 and array.dtype == np.float32, (array.dtype, array.shape)
        return None, array
    if suffix == ".parquet":
        table = pq.read_table(path)
        column = table.column("embedding").combine_chunks()
        assert pa.types.is_fixed_size_list(column.type) and pa.types.is_float32(column.type.value_type)
        array = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        array = array.reshape(-1, column.type.list_size)
        return (table.column("id").to_pylist() if "id" in table.column_names else None), array
    assert suffix == ".jsonl", path
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    has_ids = {("id" in row) for row in rows}
    assert len(has_ids) <= 1, "some rows have an id and some do not"
    array = np.array([row["embedding"] for row in rows], dtype=np.float32)
    return ([row["id"] for row in rows] if True in has_ids else None), array.reshape(len(rows), -1)


def vectors(count: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((count, width)) * 0.05).astype(np.float32)
    # awkward float32 values: signed zero, denormals, extremes, values with many digits
    special = np.array([-0.0, 0.0, 1e-45, -1.4e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 0.1, 1 / 3, 1e20,
                        123456.79, 16777217.0], dtype=np.float32)
    data.flat[: min(special.size, data.size)] = special[: data.size]
    return data


def write_all(path: Path, data: np.ndarray, block: int = 3, ids=None, texts=None, **kwargs) -> None:
    with EmbeddingWriter(path, width=data.shape[1], ids=ids is not None, texts=texts is not None, **kwargs) as writer:
        for start in range(0, data.shape[0], block):
            writer.write(data[start:start + block], ids=None if ids is None else ids[start:start + block],
                         texts=None if texts is None else texts[start:start + block])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == np.float32 and b.dtype == np.float32 and a.shape == b.shape and np.array_equal(
        a.view(np.uint32), b.view(np.uint32))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
@pytest.mark.parametrize("ids", [None, ["a", "b", "你好", "d", "e", "f", "g"], [5, 4, 3, 2, 1, 0, -1]])
def test_writer_round_trip_bits_exact(tmp_path, suffix, ids):
    if ids is not None and suffix == ".npy":
        with pytest.raises(UsageError, match="--id-column needs a .parquet or .jsonl output"):
            check_output(tmp_path / "out.npy", ids=True)
        return
    data = vectors(7, 5)
    path = tmp_path / f"out{suffix}"
    write_all(path, data, ids=ids)
    got_ids, got = read_embeddings(path)
    assert same_bits(got, data)
    assert got_ids == ids
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("rows", [0, 1, 10, 12_345])
def test_npy_is_a_plain_array_whatever_the_row_count(tmp_path, rows):
    data = vectors(rows, 4) if rows else np.zeros((0, 4), dtype=np.float32)
    write_all(tmp_path / "out.npy", data, block=1000)
    loaded = np.load(tmp_path / "out.npy")
    assert loaded.dtype == np.float32 and same_bits(loaded, data)
    reference = tmp_path / "ref.npy"
    np.save(reference, data)  # numpy's own file for the same array: the same bytes
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()


def test_parquet_schema_and_row_groups(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import poolx.corpus.writer as writer

    monkeypatch.setattr(writer, "_PARQUET_GROUP_BYTES", 4 * 4 * 5)  # 5 rows of width 4 per row group
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


def test_parquet_ids_keep_one_type_and_refuse_another(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_all(tmp_path / "out.parquet", vectors(4, 2), block=1, ids=[1, 2, 3, 4])
    assert pq.read_table(tmp_path / "out.parquet").schema.field("id").type == pa.int64()
    with pytest.raises(UsageError) as error:
        write_all(tmp_path / "bad.parquet", vectors(4, 2), block=2, ids=[1, 2, "x", "y"])
    assert "ids of one kind" in one_line(error) and leftovers(tmp_path) == []


def test_jsonl_output_is_compact_valid_json(tmp_path):
    data = vectors(4, 3)
    write_all(tmp_path / "out.jsonl", data, ids=[1, 2, 3, 4], texts=["a", "你好", "c", "d\ne"])
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    objects = [json.loads(line) for line in lines]
    assert [o["id"] for o in objects] == [1, 2, 3, 4]
    assert objects[1]["text"] == "你好" and objects[3]["text"] == "d\ne"
    assert lines[1].startswith('{"id":2,"text":"你好","embedding":[')  # fields in this order, UTF-8, no spaces
    assert '"embedding":[-0.0,0.0,1e-45]' in lines[0]
    assert "0.1," in lines[2] or "0.1]" in lines[2]  # shortest float32 form, not 0.10000000149011612
    assert same_bits(np.array([o["embedding"] for o in objects], dtype=np.float32), data)


def test_jsonl_floats_round_trip_many_random_bit_patterns(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 2**32, size=(2000, 64), dtype=np.uint64).astype(np.uint32).view(np.float32)
    data[~np.isfinite(data)] = 1.5
    write_all(tmp_path / "out.jsonl", data, block=500)
    assert same_bits(read_embeddings(tmp_path / "out.jsonl")[1], data)


def test_jsonl_floats_whose_shortest_form_does_not_survive_a_float64_read_back(tmp_path):
    data = np.array([[HARD_FLOAT32_BITS, 0x3DCCCCCD, HARD_FLOAT32_BITS | 1 << 31]], dtype=np.uint32).view(np.float32)
    write_all(tmp_path / "out.jsonl", data)
    text = (tmp_path / "out.jsonl").read_text()
    assert '"embedding":[7.038530691851209e-26,0.1,-7.038530691851209e-26]' in text  # 0.1: still the short form
    assert float(np.float32(float("7.038531e-26"))) != float(data[0, 0])  # the short form would not do
    assert same_bits(read_embeddings(tmp_path / "out.jsonl")[1], data)


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_writer_accepts_numpy_ids_and_sizes_and_empty_blocks(tmp_path, suffix):
    data = vectors(3, 2)
    numpy_ids = suffix != ".npy"
    with EmbeddingWriter(tmp_path / f"out{suffix}", width=np.int64(2), count=np.int64(3), ids=numpy_ids) as writer:
        writer.write(data[:0], ids=np.array([], dtype=np.int64) if numpy_ids else None)
        writer.write(data.astype(np.float64), ids=np.array([10, 20, 30]) if numpy_ids else None)
        writer.write(data[:0], ids=[] if numpy_ids else None)
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
    ids = suffix != ".npy"
    with pytest.raises(error):
        with EmbeddingWriter(path, width=3, ids=ids) as writer:
            writer.write(data[:3], ids=[0, 1, 2] if ids else None)
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
        with EmbeddingWriter(path, width=3, force=True) as writer:
            writer.write(vectors(6, 3)[:4])
            raise error()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_too_few_rows_for_a_declared_count_raises_and_leaves_nothing(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    with pytest.raises(RuntimeError, match="4 of 6 rows"):
        with EmbeddingWriter(path, width=3, count=6) as writer:
            writer.write(vectors(4, 3))
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_existing_output(tmp_path):
    path = tmp_path / "out.npy"
    write_all(path, vectors(2, 3, seed=5))
    write_all(path, vectors(4, 3), force=True)
    assert same_bits(read_embeddings(path)[1], vectors(4, 3))


def test_too_many_rows_wrong_shapes_and_missing_ids_are_internal_errors(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="past the 6 rows"):
        with EmbeddingWriter(path, width=3, count=6) as writer:
            writer.write(vectors(7, 3))
    with pytest.raises(RuntimeError, match=r"shape \(n, 3\)"):
        with EmbeddingWriter(path, width=3) as writer:
            writer.write(vectors(2, 4))
    with pytest.raises(RuntimeError, match="no ids"):
        with EmbeddingWriter(path, width=3, ids=True) as writer:
            writer.write(vectors(2, 3))
    with pytest.raises(RuntimeError, match="1 ids"):
        with EmbeddingWriter(path, width=3, ids=True) as writer:
            writer.write(vectors(2, 3), ids=["a"])
    with pytest.raises(RuntimeError, match="takes no ids"):
        with EmbeddingWriter(path, width=3) as writer:
            writer.write(vectors(2, 3), ids=["a", "b"])
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
        EmbeddingWriter(path, width=3)
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
    assert "--id-column" in message(tmp_path / "v.npy", ids=True)
    assert check_output(tmp_path / "other.jsonl", input_path=corpus) == tmp_path / "other.jsonl"
    assert not (tmp_path / "nope").exists()


# ------------------------------------------------------------------------------------------------ embed_file


class FakeEmbedder:
    """Embeds text t as [len(t), its first character's code point, call number]; records the chunk sizes."""

    width = 3

    def __init__(self, fail_on_call: int = -1) -> None:
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def prompt(self, name=None):
        return ""

    def embed(self, texts, batch_size=32, normalize=False, progress=None, prompt_name=None):
        if len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        self.calls.append(len(texts))
        out = np.array([[len(t), ord(t[0]) if t else 0, len(self.calls)] for t in texts], dtype=np.float32)
        for first in range(0, len(texts), batch_size):
            if progress:
                progress(min(batch_size, len(texts) - first))
        return out.reshape(len(texts), 3)


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_embed_file_streams_chunks_row_for_row(tmp_path, suffix):
    lines = ["alpha", "", "beta", "  ", "", "gamma", "δ"] * 3
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    embedder, done = FakeEmbedder(), []
    result = embed_file(embedder, tmp_path / "in.txt", tmp_path / f"out{suffix}", batch_size=2, chunk_rows=4,
                        progress=done.append)
    assert result.rows == len(lines) and result.seconds > 0
    assert embedder.calls == [4, 4, 4, 4, 4, 1] and sum(done) == len(lines)
    ids, got = read_embeddings(tmp_path / f"out{suffix}")
    assert ids is None
    assert got[:, 0].tolist() == [len(t) for t in lines]  # row i is line i, blank lines included
    assert got[:, 2].tolist() == [1 + i // 4 for i in range(len(lines))]
    assert leftovers(tmp_path) == []


def test_embed_file_carries_ids_from_an_open_reader(tmp_path):
    path = jsonl(tmp_path / "in.jsonl", [{"key": f"k{i}", "body": "x" * i} for i in range(10)])
    reader = open_corpus(path, column="body", id_column="key", batch_rows=3)
    result = embed_file(FakeEmbedder(), reader, tmp_path / "out.parquet")
    ids, got = read_embeddings(tmp_path / "out.parquet")
    assert result.rows == 10 and ids == [f"k{i}" for i in range(10)] and got[:, 0].tolist() == list(range(10))


def test_embed_file_refusals_and_interrupts_leave_nothing(tmp_path):
    path = jsonl(tmp_path / "in.jsonl", [{"id": i % 7, "text": "t"} for i in range(20)])
    with pytest.raises(UsageError) as error:  # a duplicate id in the third chunk, after two were written
        embed_file(FakeEmbedder(), path, tmp_path / "out.jsonl", id_column="id", chunk_rows=3)
    assert "twice (line 1 and line 8)" in one_line(error)
    with pytest.raises(UsageError, match="--id-column needs"):
        embed_file(FakeEmbedder(), path, tmp_path / "out.npy", id_column="id")
    with pytest.raises(KeyboardInterrupt):
        embed_file(FakeEmbedder(fail_on_call=2), path, tmp_path / "out.npy", chunk_rows=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_import_stays_light():
    code = "import sys, poolx.corpus; print([m for m in ('numpy', 'pyarrow', 'torch') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
