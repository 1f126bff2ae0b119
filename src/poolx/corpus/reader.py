"""Streaming readers of corpus files: `open_corpus(path)` checks the file and yields `Batch`es of texts (and ids)
in file order, a few thousand rows at a time, so memory does not grow with the file. See the package docstring for
the formats and the row-for-row contract."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional, Union

import orjson

from poolx.corpus._common import (
    INPUT_FORMATS, ArrowIds, check_id_value, flag, is_string, json_kind, names, not_utf8, pyarrow, short,
    supported,
)
from poolx.errors import UsageError, first_line

if TYPE_CHECKING:
    import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

BATCH_ROWS = 4096  # rows per Batch: what `poolx embed` embeds (sorted by length within) and writes per step
BATCH_CHARS = 1 << 25  # a Batch also ends once its texts hold this many characters (32 Mi): long texts, few rows
# The longest line (.txt, .jsonl) or CSV field read: 64 Mi characters. The model reads a text's first max_length
# tokens (a few KB; a longer text is cut before it is tokenized), so a longer line is no text but a file without
# line ends, a binary or a device such as /dev/zero, which would otherwise be read into memory without end: it is
# refused, naming its line, after reading at most this much of it.
MAX_LINE_CHARS = 1 << 26


class Batch(NamedTuple):
    """Rows `start .. start + len(texts) - 1` of a corpus; `ids[i]` (with an id column) belongs to `texts[i]`."""

    start: int
    texts: list[str]
    ids: Optional[list[Any]]


class _Raw(NamedTuple):
    """What a format's generator yields: texts, ids and, for ids, where each row is in the file (`line N`); None
    places mean `row N` counted from 0 over the whole input."""

    texts: list[str]
    ids: Optional[list[Any]]
    places: Optional[list[str]]


@dataclass
class Corpus:
    """A whole corpus in memory (`read_corpus`): texts in file order; `ids[i]` (with an id column) for `texts[i]`."""

    texts: list[str]
    ids: Optional[list[Any]]
    source: Path
    format: str

    def __len__(self) -> int:
        return len(self.texts)


def open_corpus(
    path: PathLike, column: str = "text", id_column: Optional[str] = None, *, batch_rows: int = BATCH_ROWS,
) -> "CorpusReader":
    """Open a corpus file for streaming; the format comes from the extension (see the package docstring).

    The file's name, header or schema, and its first batch are checked here, so most problems (a missing column,
    an empty file, a first line that is not JSON) are raised before any work is done; problems further in are
    raised by the iteration, always as one-line `UsageError`s. Use it as a context manager, iterate it once."""
    source = Path(path)
    suffix = source.suffix.lower()
    fmt = INPUT_FORMATS.get(suffix)
    if source.is_dir() and fmt != "parquet":
        raise UsageError(f"{source} is a directory; give a file of texts ({supported(INPUT_FORMATS)})")
    if fmt is None:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise UsageError(f"{source} has {what}; supported inputs are {supported(INPUT_FORMATS)}")
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if fmt == "txt" and (column != "text" or id_column is not None):
        which = "--column" if column != "text" else "--id-column"
        raise UsageError(f"{which} does not apply to a .txt input (one text per line, no columns); use .jsonl, .csv "
                         f"or .parquet to name columns")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    reader = CorpusReader(source, fmt, column, id_column, batch_rows)
    try:
        reader._prefetch()
    except BaseException:
        reader.close()
        raise
    return reader


def read_corpus(path: PathLike, column: str = "text", id_column: Optional[str] = None) -> Corpus:
    """The whole corpus in memory, checked as `open_corpus` checks it (for small files and tests; `poolx embed`
    streams)."""
    texts: list[str] = []
    ids: Optional[list[Any]] = [] if id_column is not None else None
    with open_corpus(path, column, id_column) as reader:
        for batch in reader:
            texts += batch.texts
            if ids is not None and batch.ids is not None:
                ids += batch.ids
    return Corpus(texts=texts, ids=ids, source=reader.source, format=reader.format)


class CorpusReader:
    """Batches of a corpus file, in file order (made by `open_corpus`). `total` is the number of rows when it is
    known without reading the file through (.txt, .parquet), else None; `rows` counts the rows read so far."""

    def __init__(self, source: Path, fmt: str, column: str, id_column: Optional[str], batch_rows: int) -> None:
        self.source, self.format = source, fmt
        self.column, self.id_column = column, id_column
        self.batch_rows = batch_rows
        self.rows = 0
        self.total: Optional[int] = None
        self._parts: list[Path] = []
        self._raw: Optional[Iterator[_Raw]] = None
        self._first: Optional[Batch] = None
        self._ids: Optional[_IdChecker] = None
        self._started = False
        self._arrow_ids: Optional[ArrowIds] = None

    # -- use

    def __enter__(self) -> "CorpusReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()  # type: ignore[attr-defined]  # a generator: closes its file

    def __iter__(self) -> Iterator[Batch]:
        if self._started:
            raise RuntimeError("internal error: a CorpusReader can be iterated once")
        self._started = True
        if self._first is not None:
            yield self._first
            self._first = None
        while True:
            batch = self._next()
            if batch is None:
                return
            yield batch

    def tables(self, id_type: Any = None) -> Iterator[Any]:
        """The batches as Arrow tables: `text` (string) and, with an id column, `id` (one type for every batch:
        `id_type`, or what the first batch's ids infer)."""
        pa, _ = pyarrow()
        arrow_ids = ArrowIds(id_type)
        for batch in self:
            columns = {"text": pa.array(batch.texts, type=pa.string())}
            if batch.ids is not None:
                columns["id"] = arrow_ids.array(batch.ids)
            yield pa.table(columns)

    # -- reading

    def _prefetch(self) -> None:
        fmt = self.format
        if fmt == "parquet":
            self._parts = self._parquet_parts()
        elif fmt == "txt" and self.source.is_file():  # a pipe or a device cannot be read twice, or ends never
            self.total = _count_lines(self.source)
        if self.id_column is not None:
            self._ids = _IdChecker(self.source, self._rescan)
        self._raw = self._generator()
        self._first = self._next()
        if self._first is None:
            raise UsageError(f"{self.source} has no texts; write one text per "
                             f"{'line' if fmt in ('txt', 'jsonl') else 'row'}")

    def _generator(self) -> Iterator[_Raw]:
        if self.format == "txt":
            return _read_txt(self.source, self.batch_rows)
        if self.format == "jsonl":
            return _read_jsonl(self.source, self.column, self.id_column, self.batch_rows)
        if self.format in ("csv", "tsv"):
            return _read_csv(self.source, self.column, self.id_column, "\t" if self.format == "tsv" else ",",
                             self.batch_rows)
        return _read_parquet(self.source, self._parts, self.column, self.id_column, self.batch_rows)

    def _next(self) -> Optional[Batch]:
        assert self._raw is not None
        try:
            raw = next(self._raw, None)
        except UnicodeDecodeError:
            raise not_utf8(self.source) from None
        except OSError as e:
            raise UsageError(f"{self.source}: {e.strerror or e}") from None
        if raw is None:
            return None
        start = self.rows
        if self._ids is not None:
            assert raw.ids is not None
            self._ids.check(start, raw.ids, raw.places)
        self.rows += len(raw.texts)
        return Batch(start, raw.texts, raw.ids)

    def _rescan(self) -> Iterator[tuple[int, Any, str]]:
        """(row, id, place) of every row from the start (to name both places of a duplicate id)."""
        row = 0
        generator = self._generator()
        try:
            for raw in generator:
                assert raw.ids is not None
                for i, value in enumerate(raw.ids):
                    yield row, value, raw.places[i] if raw.places is not None else f"row {row}"
                    row += 1
        finally:
            generator.close()  # type: ignore[attr-defined]

    def _parquet_parts(self) -> list[Path]:
        """The Parquet file, or a directory's *.parquet part files in name order; checks each one's schema."""
        pa, pq = pyarrow()
        if self.source.is_dir():
            parts = sorted(p for p in self.source.iterdir() if p.suffix.lower() == ".parquet" and p.is_file()
                           and not p.name.startswith((".", "_")))
            if not parts:
                raise UsageError(f"{self.source} is a directory without .parquet files; give a file of texts or a "
                                 f"directory of Parquet part files")
        else:
            parts = [self.source]
        total = 0
        for part in parts:
            try:
                metadata = pq.read_metadata(part)
                schema = metadata.schema.to_arrow_schema()
            except (pa.ArrowException, ValueError, OSError) as e:
                raise UsageError(f"{part} is not a readable Parquet file ({first_line(e)})") from None
            _check_parquet_schema(part, schema, self.column, self.id_column)
            total += metadata.num_rows
        self.total = total
        return parts


def _count_lines(path: Path) -> Optional[int]:
    """The number of texts in a .txt file, counted on its bytes (for a progress bar; decoding is checked later)."""
    count, last, size = 0, b"\n", 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
                size += len(chunk)
            if last != b"\n":
                f.seek(0)
                if size > 3 or f.read(3) != b"\xef\xbb\xbf":  # a BOM alone is no text
                    count += 1
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    return count


# --------------------------------------------------------------------------------------------------------- duplicates


class _IdChecker:
    """Checks ids as they stream by: one kind, finite, within 64 bits, unique. Uniqueness keeps 8 bytes per id (a
    64-bit key in sorted numpy arrays, merged like a binary counter), not the ids themselves; a key seen before is
    confirmed, and its first place found, by reading the ids again from the start (`rescan`), so a key that two
    different ids share is never reported as a duplicate."""

    def __init__(self, source: Path, rescan: Callable[[], Iterator[tuple[int, Any, str]]]) -> None:
        self.source = source
        self.rescan = rescan
        self.first_kind: Optional[str] = None
        self.levels: list["np.ndarray"] = []

    def check(self, start: int, ids: list[Any], places: Optional[list[str]]) -> None:
        import numpy as np

        if not ids:
            return
        keys = np.empty(len(ids), dtype=np.int64)
        for i, value in enumerate(ids):
            where = places[i] if places is not None else f"row {start + i}"
            kind = check_id_value(self.source, value, self.first_kind, where)
            if self.first_kind is None:
                self.first_kind = kind
            keys[i] = _key(value)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        seen = np.zeros(len(ids), dtype=bool)
        seen[order[1:][ordered[1:] == ordered[:-1]]] = True  # the same key earlier in this batch
        for level in self.levels:
            at = np.minimum(np.searchsorted(level, keys), len(level) - 1)
            seen |= level[at] == keys
        for i in np.flatnonzero(seen):
            self._confirm(start + int(i), ids[i], places[i] if places is not None else f"row {start + i}")
        merged = ordered
        while self.levels and len(self.levels[-1]) <= len(merged):
            merged = np.concatenate([self.levels.pop(), merged])
            merged.sort(kind="stable")  # two sorted runs: a merge, in place (no third copy at the peak)
        self.levels.append(merged)

    def _confirm(self, row: int, value: Any, where: str) -> None:
        for earlier, other, place in self.rescan():
            if earlier >= row:
                return  # another id with the same key: not a duplicate
            if other == value:
                raise UsageError(f"{self.source} has the id {short(value)} twice ({place} and {where}); ids must be "
                                 f"unique")


def _key(value: Any) -> int:
    """A 64-bit key that equal ids share (1 and 1.0 are equal, as in a dict); different ids rarely do."""
    if isinstance(value, int):  # bool included
        return int(value) if value < 2**63 else value - 2**64
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63:
        return int(value)
    return hash(value)


# --------------------------------------------------------------------------------------------------------- formats


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its `\\n` or `\\r\\n`), decoded strictly; a leading BOM is dropped. A line of
    more than MAX_LINE_CHARS characters is refused once that much of it is read (`_too_long`)."""
    limit = MAX_LINE_CHARS
    with open(path, encoding="utf-8-sig", newline="\n") as f:  # newline="\n": split on \n only, untranslated
        number = 0
        while True:
            line = f.readline(limit + 2)  # the longest line allowed, its \r\n, or a sign that it goes on
            if not line:
                return
            number += 1
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            if len(line) > limit:
                raise _too_long(path, number)
            yield number, line


def _too_long(path: Path, number: int) -> UsageError:
    return UsageError(f"{path} line {number} is longer than {MAX_LINE_CHARS:,} characters; a line holds one text "
                      f"(is this a text file, with line ends?)")


def _bounded_lines(f: Any, path: Path) -> Iterator[str]:
    """The lines of a text file opened with newline="" (for the csv module), each at most MAX_LINE_CHARS long."""
    number = 0
    while True:
        line = f.readline(MAX_LINE_CHARS + 2)
        if not line:
            return
        number += 1
        if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
            raise _too_long(path, number)
        yield line


def _read_txt(path: Path, batch_rows: int) -> Iterator[_Raw]:
    texts: list[str] = []
    chars = 0
    for _, line in _lines(path):
        texts.append(line)
        chars += len(line)
        if len(texts) >= batch_rows or chars >= BATCH_CHARS:
            yield _Raw(texts, None, None)
            texts, chars = [], 0
    if texts:
        yield _Raw(texts, None, None)


def _read_jsonl(path: Path, column: str, id_column: Optional[str], batch_rows: int) -> Iterator[_Raw]:
    texts: list[str] = []
    ids: Optional[list[Any]] = [] if id_column is not None else None
    places: list[str] = []
    chars = 0
    hint = (" (a .json input is read as JSON Lines: one object per line, not one JSON document)"
            if path.suffix.lower() == ".json" else "")
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:  # json's message (and json's reading of NaN, big integers, lone surrogates, which orjson refuses)
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} line {number} is not valid JSON ({e.msg} at column {e.colno}); write one "
                                 f"JSON object per line{hint}") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path} line {number} is a JSON {json_kind(obj)}, not an object; write one object per "
                             f"line such as {{\"{column}\": \"...\"}}{hint}")
        texts.append(_jsonl_field(path, number, obj, column, column, id_column))
        chars += len(line)
        if ids is not None:
            assert id_column is not None
            ids.append(_jsonl_field(path, number, obj, id_column, column, id_column))
            places.append(f"line {number}")
        if len(texts) >= batch_rows or chars >= BATCH_CHARS:
            yield _Raw(texts, ids, places if ids is not None else None)
            texts, ids, places, chars = [], [] if ids is not None else None, [], 0
    if texts:
        yield _Raw(texts, ids, places if ids is not None else None)


def _jsonl_field(path: Path, number: int, obj: dict, name: str, column: str, id_column: Optional[str]) -> Any:
    """Field `name` of the object on line `number`: a string for the text, a JSON scalar for the id."""
    value = obj.get(name)
    if value is None:
        null = " (it is null)" if name in obj else ""
        fields = names([k for k in obj if obj[k] is not None])
        raise UsageError(f"{path} line {number} has no field {name!r}{null}; its fields are: {fields} (choose one "
                         f"with {flag(name, column, id_column)})")
    if name == column:
        if not isinstance(value, str):
            raise UsageError(f"{path} line {number}: field {name!r} is a JSON {json_kind(value)}, not a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{path} line {number}: field {name!r} has an unpaired surrogate escape such as "
                             f"\\ud800; fix the text") from None
    elif not isinstance(value, (str, int, float)):  # bool is an int
        raise UsageError(f"{path} line {number}: id field {name!r} is a JSON {json_kind(value)}; ids must be "
                         f"strings or numbers")
    return value


def _read_csv(
    path: Path, column: str, id_column: Optional[str], delimiter: str, batch_rows: int,
) -> Iterator[_Raw]:
    """Python's csv module, strict: pyarrow's CSV reader would take a stray quote (`"a"b`, an unclosed quote, a TSV
    field starting with a quote) as data without a word, and names no line numbers."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        # a stray quote is an error, not a merged row; no line is read whole beyond MAX_LINE_CHARS
        reader = csv.reader(_bounded_lines(f, path), delimiter=delimiter, strict=True)
        header: Optional[list[str]] = None
        text_at = id_at = -1
        while True:
            texts: list[str] = []
            ids: Optional[list[Any]] = [] if id_column is not None else None
            places: list[str] = []
            chars = 0
            limit = csv.field_size_limit(MAX_LINE_CHARS)  # only while this batch is read: the limit is global
            try:
                for row in reader:
                    if not row:  # a blank line
                        continue
                    if header is None:
                        header = row
                        text_at = _csv_index(path, header, column, column, id_column)
                        if id_column is not None:
                            id_at = _csv_index(path, header, id_column, column, id_column)
                        continue
                    if len(row) != len(header):
                        raise UsageError(f"{path} line {reader.line_num} has {len(row)} fields but the header has "
                                         f"{len(header)}; quote fields that contain {_delimiter_name(delimiter)}, "
                                         f"quotes or newlines")
                    texts.append(row[text_at])
                    chars += len(row[text_at])
                    if ids is not None:
                        if not row[id_at]:
                            raise UsageError(f"{path} line {reader.line_num}: the id column {id_column!r} is empty; "
                                             f"every row needs an id")
                        ids.append(row[id_at])
                        places.append(f"line {reader.line_num}")
                    if len(texts) >= batch_rows or chars >= BATCH_CHARS:
                        break
            except csv.Error as e:
                if "field limit" in str(e):  # a quoted field of many lines, longer than MAX_LINE_CHARS in all
                    raise UsageError(f"{path} line {reader.line_num}: a field is longer than {MAX_LINE_CHARS:,} "
                                     f"characters (an unclosed quote?)") from None
                kind, why = ("TSV" if delimiter == "\t" else "CSV"), str(e).replace("\t", "\\t")
                raise UsageError(f"{path} line {reader.line_num} is not valid {kind} ({why}); a field that holds "
                                 f"quotes must be quoted, with each quote doubled (\"\")") from None
            finally:
                csv.field_size_limit(limit)
            if not texts:
                return
            yield _Raw(texts, ids, places if ids is not None else None)


def _delimiter_name(delimiter: str) -> str:
    return "tabs" if delimiter == "\t" else "commas"


def _csv_index(path: Path, header: list[str], name: str, column: str, id_column: Optional[str]) -> int:
    found = [i for i, h in enumerate(header) if h == name]
    if not found:
        raise UsageError(f"{path} has no column {name!r}; its columns are: {names(header)} (choose one with "
                         f"{flag(name, column, id_column)}; the first row must be a header)")
    if len(found) > 1:
        raise UsageError(f"{path} has {len(found)} columns named {name!r}; rename them so the header is unambiguous")
    return found[0]


def _check_parquet_schema(path: Path, schema: Any, column: str, id_column: Optional[str]) -> None:
    pa, _ = pyarrow()
    for name in [column] + ([id_column] if id_column is not None and id_column != column else []):
        if name not in schema.names:
            raise UsageError(f"{path} has no column {name!r}; its columns are: {names(schema.names)} (choose one "
                             f"with {flag(name, column, id_column)})")
        if schema.names.count(name) > 1:
            raise UsageError(f"{path} has {schema.names.count(name)} columns named {name!r}; rename them")
    text_type = schema.field(column).type
    if not is_string(pa, text_type):
        raise UsageError(f"{path} column {column!r} has type {text_type}, not string; cast it to string or choose "
                         f"another with --column")
    if id_column is not None:
        id_type = schema.field(id_column).type
        if not (is_string(pa, id_type) or pa.types.is_integer(id_type) or pa.types.is_floating(id_type)
                or pa.types.is_boolean(id_type)):
            raise UsageError(f"{path} id column {id_column!r} has type {id_type}; ids must be strings, integers, "
                             f"floats or booleans (cast it to string)")


def _read_parquet(
    source: Path, parts: list[Path], column: str, id_column: Optional[str], batch_rows: int,
) -> Iterator[_Raw]:
    pa, pq = pyarrow()
    import pyarrow.compute as pc

    wanted = [column] + ([id_column] if id_column is not None and id_column != column else [])
    for part in parts:
        try:
            parquet = pq.ParquetFile(part, buffer_size=1 << 20)  # buffered: a big row group is not read whole
        except (pa.ArrowException, ValueError) as e:
            raise UsageError(f"{part} is not a readable Parquet file ({first_line(e)})") from None
        with parquet:
            _check_parquet_schema(part, parquet.schema_arrow, column, id_column)
            row = 0
            batches = parquet.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False)
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, ValueError) as e:
                    raise UsageError(f"{part} could not be read ({first_line(e)})") from None
                if batch is None:
                    break
                for name in wanted:
                    data = batch.column(name)
                    if data.null_count:
                        at = row + pc.index(data.is_null(), True).as_py()
                        raise UsageError(f"{part} column {name!r} is null at row {at} (counting from 0); every row "
                                         f"needs a value")
                try:
                    texts = batch.column(column).to_pylist()
                except UnicodeDecodeError:
                    raise UsageError(f"{part} column {column!r} holds bytes that are not UTF-8; rewrite it as "
                                     f"UTF-8") from None
                ids = batch.column(id_column).to_pylist() if id_column is not None else None
                row += len(texts)
                if texts:
                    yield _Raw(texts, ids, None)
