"""Reading a corpus of texts from a file and writing embeddings to a file, for `poolx embed`.

Inputs: .txt (one text per line), .jsonl/.ndjson (one JSON object per line), .csv/.tsv (with a header row) and
.parquet. Outputs: .npy, .parquet and .jsonl, written to a hidden temporary file beside the target and moved onto it
only when every row is written, so an interrupted run never leaves a partial file. Every problem a user can cause is
a one-line `UsageError`. numpy is imported when writing and pyarrow only for Parquet files, so importing this module
stays light.
"""

from __future__ import annotations

import csv
import json
import math
import operator
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

from poolx.errors import PoolxError, UsageError

if TYPE_CHECKING:
    import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

INPUT_FORMATS = {
    ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
}
OUTPUT_FORMATS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl"}

_MAX_LISTED = 20  # columns or fields named in an error message
_PARQUET_GROUP_BYTES = 32 << 20  # embedding bytes per Parquet row group


@dataclass
class Corpus:
    """Texts read from `source`, in file order; `ids[i]` (when an id column was asked for) belongs to `texts[i]`."""

    texts: list[str]
    ids: Optional[list[Any]]
    source: Path
    format: str

    def __len__(self) -> int:
        return len(self.texts)


# --------------------------------------------------------------------------------------------------------- reading


def read_corpus(path: PathLike, column: str = "text", id_column: Optional[str] = None) -> Corpus:
    """Read the texts (and optionally ids) of a corpus file; the format comes from the extension.

    - `.txt`: one text per line, UTF-8, `\\n` or `\\r\\n` line ends; a final newline does not add a text. Blank lines
      are kept as empty texts, so output row i is always input line i. `column`/`id_column` do not apply.
    - `.jsonl`/`.ndjson`: one JSON object per line, the text in field `column`; blank lines are skipped.
    - `.csv`/`.tsv`: a header row, then one row per text; the text is the cell under `column`. Empty cells are empty
      texts; blank lines are skipped (so in a one-column file an empty text must be written as `""`).
    - `.parquet`: the string column `column`; nulls are refused.

    Text files are decoded strictly as UTF-8 (a leading BOM is dropped). Ids, when `id_column` is given, must be
    present on every row and unique. Any problem raises a one-line `UsageError`.
    """
    source = Path(path)
    if source.is_dir():
        raise UsageError(f"{source} is a directory; give a file of texts ({_supported(INPUT_FORMATS)})")
    suffix = source.suffix.lower()
    fmt = INPUT_FORMATS.get(suffix)
    if fmt is None:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise UsageError(f"{source} has {what}; supported inputs are {_supported(INPUT_FORMATS)}")
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if fmt == "txt" and (column != "text" or id_column is not None):
        flag = "--column" if column != "text" else "--id-column"
        raise UsageError(f"{flag} does not apply to a .txt input (one text per line, no columns); use .jsonl, .csv "
                         f"or .parquet to name columns")
    try:
        if fmt == "txt":
            texts, ids = _read_txt(source), None
        elif fmt == "jsonl":
            texts, ids = _read_jsonl(source, column, id_column)
        elif fmt in ("csv", "tsv"):
            texts, ids = _read_csv(source, column, id_column, "\t" if fmt == "tsv" else ",")
        else:
            texts, ids = _read_parquet(source, column, id_column)
    except UnicodeDecodeError:
        raise _not_utf8(source) from None
    except OSError as e:
        raise UsageError(f"{source}: {e.strerror or e}") from None
    if not texts:
        raise UsageError(f"{source} has no texts; write one text per {'line' if fmt in ('txt', 'jsonl') else 'row'}")
    return Corpus(texts=texts, ids=ids, source=source, format=fmt)


def _supported(formats: dict[str, str]) -> str:
    return ", ".join(formats)


def _names(names: Sequence[Any]) -> str:
    """`'a', 'b', 'c'` for an error message, cut after `_MAX_LISTED` names."""
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "") if names else "(none)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flag(name: str, column: str, id_column: Optional[str]) -> str:
    return "--id-column" if name == id_column and name != column else "--column"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its `\\n` or `\\r\\n`), decoded strictly; a leading BOM is dropped."""
    with open(path, encoding="utf-8-sig", newline="\n") as f:  # newline="\n": split on \n only, untranslated
        for number, line in enumerate(f, 1):
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            yield number, line


def _not_utf8(path: Path) -> UsageError:
    """The error for a file that is not UTF-8, naming the first bad byte's line and offset."""
    fixed = path.with_name(path.stem + ".utf8" + path.suffix)
    fix = f"convert it first, e.g. iconv -f LATIN1 -t UTF-8 {path} > {fixed}"
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):  # a \n byte never occurs inside a multi-byte UTF-8 character
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return UsageError(f"{path} is not UTF-8: byte 0x{raw[e.start]:02x} at line {number} (byte offset "
                                  f"{offset + e.start}) cannot be decoded; {fix}")
            offset += len(raw)
    return UsageError(f"{path} is not UTF-8; {fix}")


def _read_txt(path: Path) -> list[str]:
    return [line for _, line in _lines(path)]


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _read_jsonl(path: Path, column: str, id_column: Optional[str]) -> tuple[list[str], Optional[list[Any]]]:
    texts: list[str] = []
    ids: Optional[list[Any]] = [] if id_column is not None else None
    lines: list[int] = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {number} is not valid JSON ({e.msg} at column {e.colno}); write one JSON "
                             f"object per line") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path} line {number} is a JSON {_json_kind(obj)}, not an object; write one object per "
                             f"line such as {{\"{column}\": \"...\"}}")
        texts.append(_jsonl_field(path, number, obj, column, column, id_column))
        if ids is not None:
            assert id_column is not None
            ids.append(_jsonl_field(path, number, obj, id_column, column, id_column))
            lines.append(number)
    if ids is not None:
        _check_ids(path, ids, lambda i: f"line {lines[i]}")
    return texts, ids


def _jsonl_field(path: Path, number: int, obj: dict, name: str, column: str, id_column: Optional[str]) -> Any:
    """Field `name` of the object on line `number`: a string for the text, a JSON scalar for the id."""
    value = obj.get(name)
    if value is None:
        null = " (it is null)" if name in obj else ""
        fields = _names([k for k in obj if obj[k] is not None])
        raise UsageError(f"{path} line {number} has no field {name!r}{null}; its fields are: {fields} (choose one "
                         f"with {_flag(name, column, id_column)})")
    if name == column:
        if not isinstance(value, str):
            raise UsageError(f"{path} line {number}: field {name!r} is a JSON {_json_kind(value)}, not a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{path} line {number}: field {name!r} has an unpaired surrogate escape such as "
                             f"\\ud800; fix the text") from None
    elif not isinstance(value, (str, int, float)):  # bool is an int
        raise UsageError(f"{path} line {number}: id field {name!r} is a JSON {_json_kind(value)}; ids must be "
                         f"strings or numbers")
    return value


def _read_csv(
    path: Path, column: str, id_column: Optional[str], delimiter: str
) -> tuple[list[str], Optional[list[Any]]]:
    texts: list[str] = []
    ids: Optional[list[Any]] = [] if id_column is not None else None
    lines: list[int] = []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are normal here
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, strict=True)  # a stray quote is an error, not a merged row
            header: Optional[list[str]] = None
            text_at = id_at = -1
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
                    if ids is not None:
                        if not row[id_at]:
                            raise UsageError(f"{path} line {reader.line_num}: the id column {id_column!r} is empty; "
                                             f"every row needs an id")
                        ids.append(row[id_at])
                        lines.append(reader.line_num)
            except csv.Error as e:
                kind, why = ("TSV" if delimiter == "\t" else "CSV"), str(e).replace("\t", "\\t")
                raise UsageError(f"{path} line {reader.line_num} is not valid {kind} ({why}); a field that holds quotes "
                                 f"must be quoted, with each quote doubled (\"\")") from None
    finally:
        csv.field_size_limit(old_limit)
    if ids is not None:
        _check_ids(path, ids, lambda i: f"line {lines[i]}")
    return texts, ids


def _delimiter_name(delimiter: str) -> str:
    return "tabs" if delimiter == "\t" else "commas"


def _csv_index(path: Path, header: list[str], name: str, column: str, id_column: Optional[str]) -> int:
    found = [i for i, h in enumerate(header) if h == name]
    if not found:
        raise UsageError(f"{path} has no column {name!r}; its columns are: {_names(header)} (choose one with "
                         f"{_flag(name, column, id_column)}; the first row must be a header)")
    if len(found) > 1:
        raise UsageError(f"{path} has {len(found)} columns named {name!r}; rename them so the header is unambiguous")
    return found[0]


def _read_parquet(path: Path, column: str, id_column: Optional[str]) -> tuple[list[str], Optional[list[Any]]]:
    pa, pq = _pyarrow()
    import pyarrow.compute as pc

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, ValueError) as e:
        raise UsageError(f"{path} is not a readable Parquet file ({_first_line(e)})") from None
    wanted = [column] + ([id_column] if id_column is not None and id_column != column else [])
    for name in wanted:
        if name not in schema.names:
            raise UsageError(f"{path} has no column {name!r}; its columns are: {_names(schema.names)} (choose one "
                             f"with {_flag(name, column, id_column)})")
        if schema.names.count(name) > 1:
            raise UsageError(f"{path} has {schema.names.count(name)} columns named {name!r}; rename them")
    try:
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, ValueError) as e:
        raise UsageError(f"{path} could not be read ({_first_line(e)})") from None

    def first_null(name: str) -> None:
        data = table.column(name)
        if data.null_count:
            row = pc.index(data.is_null(), True).as_py()
            raise UsageError(f"{path} column {name!r} is null at row {row} (counting from 0); every row needs a value")

    text_type = table.schema.field(column).type
    if not _is_string(pa, text_type):
        raise UsageError(f"{path} column {column!r} has type {text_type}, not string; cast it to string or choose "
                         f"another with --column")
    first_null(column)
    try:
        texts = table.column(column).to_pylist()
    except UnicodeDecodeError:
        raise UsageError(f"{path} column {column!r} holds bytes that are not UTF-8; rewrite it as UTF-8") from None
    ids: Optional[list[Any]] = None
    if id_column is not None:
        id_type = table.schema.field(id_column).type
        if not (_is_string(pa, id_type) or pa.types.is_integer(id_type) or pa.types.is_floating(id_type)
                or pa.types.is_boolean(id_type)):
            raise UsageError(f"{path} id column {id_column!r} has type {id_type}; ids must be strings, integers, "
                             f"floats or booleans (cast it to string)")
        first_null(id_column)
        ids = table.column(id_column).to_pylist()
        _check_ids(path, ids, lambda i: f"row {i}")
    return texts, ids


def _is_string(pa: Any, type_: Any) -> bool:
    is_view = getattr(pa.types, "is_string_view", lambda t: False)
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or is_view(type_))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("Parquet files need pyarrow; install it with `pip install pyarrow`") from None
    return pa, pq


def _check_ids(path: Path, ids: list[Any], where: Callable[[int], str]) -> None:
    """Ids must be of one kind (strings, numbers or booleans), finite, within 64 bits if integers, and unique;
    `where(i)` names the place of id i in the file."""
    kinds = {"string": "strings", "number": "numbers", "boolean": "booleans"}
    first_kind = _json_kind(ids[0]) if ids else None
    seen: dict[Any, int] = {}
    for i, value in enumerate(ids):
        kind = _json_kind(value)
        if kind != first_kind:
            raise UsageError(f"{path} {where(i)}: id {_short(value)} is a {kind} but the first id is a {first_kind}; "
                             f"ids must all be {kinds.get(str(first_kind), 'one kind')}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{path} {where(i)}: id {value!r} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise UsageError(f"{path} {where(i)}: id {value} does not fit in 64 bits; write it as a string")
        earlier = seen.setdefault(value, i)
        if earlier != i:
            raise UsageError(f"{path} has the id {_short(value)} twice ({where(earlier)} and {where(i)}); ids must be "
                             f"unique")


# --------------------------------------------------------------------------------------------------------- writing


def check_output(path: PathLike, force: bool = False, input_path: Optional[PathLike] = None) -> Path:
    """Refuse an output path that cannot or must not be written, before any work is done: an unknown extension, a
    directory, a missing parent directory, the input file itself, or an existing file without `force`."""
    out = Path(path)
    suffix = out.suffix.lower()
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; name a file ending in {_supported(OUTPUT_FORMATS)}")
    if suffix not in OUTPUT_FORMATS:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise UsageError(f"output {out} has {what}; supported outputs are {_supported(OUTPUT_FORMATS)}")
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"the directory of output {out} ({parent}) does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {out}: directory {parent} is not writable; choose another output")
    if input_path is not None and _same_file(out, Path(input_path)):
        raise UsageError(f"output {out} is the input file; write the embeddings to another file")
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"output {out} exists; pass --force to replace it, or choose another output file")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b) or a.resolve() == b.resolve()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class EmbeddingWriter:
    """Write `count` embeddings of `width` floats to `path` (.npy, .parquet or .jsonl), all or nothing.

    Use it as a context manager and call `write(start_row, vectors)` with consecutive blocks of rows. Rows go to a
    hidden temporary file beside `path` (`.NAME.tmp-XXXX`), which is fsynced and moved onto `path` only when the block
    exits without an error and all `count` rows were written; otherwise (KeyboardInterrupt included) it is removed and
    `path`, if it existed, is left as it was. `ids` (and `texts`) add an `id` (and `text`) field to .parquet and .jsonl
    rows; .npy holds the matrix only. Vectors must be finite.
    """

    def __init__(self, path: PathLike, width: int, count: int, ids: Optional[Sequence[Any]] = None,
                 texts: Optional[Sequence[str]] = None, force: bool = False) -> None:
        self.path = check_output(path, force)
        self.format = OUTPUT_FORMATS[self.path.suffix.lower()]
        width, count = operator.index(width), operator.index(count)
        if width < 1 or count < 0:
            raise ValueError(f"width must be >= 1 and count >= 0, got width={width} count={count}")
        if ids is not None and len(ids) != count:
            raise ValueError(f"{len(ids)} ids for {count} rows")
        if texts is not None and len(texts) != count:
            raise ValueError(f"{len(texts)} texts for {count} rows")
        self.width = width
        self.count = count
        self.force = force
        self.ids = None if ids is None else [v.item() if hasattr(v, "item") else v for v in ids]  # numpy scalars
        self.texts = None if texts is None else list(texts)
        self.rows_written = 0
        self._tmp: Optional[Path] = None
        self._file: Any = None
        self._parquet: Any = None  # pyarrow.parquet.ParquetWriter
        self._schema: Any = None
        self._id_array: Any = None
        self._pending: list[Any] = []
        self._pending_rows = 0
        self._flushed_rows = 0
        self._used = False
        if self.format == "parquet":
            self._prepare_parquet()

    # -- context

    def __enter__(self) -> "EmbeddingWriter":
        if self._used:
            raise RuntimeError("internal error: an EmbeddingWriter can be used for one `with` block only")
        self._used = True
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
        except OSError as e:
            raise UsageError(f"cannot create a file in {self.path.parent}: {e.strerror or e}") from None
        self._tmp = Path(name)
        try:
            self._file = os.fdopen(fd, "wb")
            os.chmod(name, 0o666 & ~_umask())
            if self.format == "npy":
                self._write_npy_header()
            elif self.format == "parquet":
                _, pq = _pyarrow()
                self._parquet = pq.ParquetWriter(self._file, self._schema, use_dictionary=False)
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._discard()
            return None
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise
        return None

    # -- rows

    def write(self, start_row: int, vectors: "np.ndarray") -> None:
        """Write rows `start_row .. start_row + len(vectors) - 1`; rows must come in order, without gaps."""
        import numpy as np

        if self._file is None:
            raise RuntimeError("internal error: EmbeddingWriter.write called outside its `with` block")
        if start_row != self.rows_written:
            raise RuntimeError(f"internal error: rows must be written in order; expected start_row "
                               f"{self.rows_written}, got {start_row}")
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.width or array.dtype.kind != "f":
            raise RuntimeError(f"internal error: expected a float array of shape (n, {self.width}), got "
                               f"{array.dtype} {array.shape}")
        n = array.shape[0]
        if start_row + n > self.count:
            raise RuntimeError(f"internal error: rows {start_row}..{start_row + n - 1} go past the {self.count} rows "
                               f"declared")
        if n == 0:
            return
        array = np.ascontiguousarray(array, dtype="<f4")
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            row = start_row + int(np.flatnonzero(~finite)[0])
            raise PoolxError(f"the embedding of row {row} contains NaN or inf; nothing was written to {self.path}")
        try:
            if self.format == "npy":
                self._file.write(memoryview(array).cast("B"))
            elif self.format == "jsonl":
                self._file.write(self._jsonl_rows(start_row, array))
            else:
                self._pending.append(array)
                self._pending_rows += n
                if self._pending_rows >= max(1, _PARQUET_GROUP_BYTES // (4 * self.width)):
                    self._flush_parquet()
        except OSError as e:
            raise UsageError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.rows_written += n

    # -- formats

    def _write_npy_header(self) -> None:
        from numpy.lib import format as npy_format

        header = {"descr": "<f4", "fortran_order": False, "shape": (self.count, self.width)}
        npy_format.write_array_header_1_0(self._file, header)

    def _jsonl_rows(self, start_row: int, array: "np.ndarray") -> bytes:
        """One JSON object per row; floats in their shortest form that reads back to the same float32 bits."""
        import numpy as np

        flat = array.ravel()
        numbers = list(map(str, flat))  # numpy prints a float32 as the shortest string that identifies it
        back = np.array(numbers, dtype=np.float64).astype(np.float32)  # how a JSON reader gets float32 back
        for i in np.flatnonzero(back.view(np.uint32) != flat.view(np.uint32)):
            numbers[i] = repr(float(flat[i]))  # the exact float64 value always reads back exactly
        lines = []
        w = self.width
        for i in range(array.shape[0]):
            row = start_row + i
            head = "{"
            if self.ids is not None:
                head += '"id":' + json.dumps(self.ids[row], ensure_ascii=False) + ","
            if self.texts is not None:
                head += '"text":' + json.dumps(self.texts[row], ensure_ascii=False) + ","
            lines.append(head + '"embedding":[' + ",".join(numbers[i * w:(i + 1) * w]) + "]}\n")
        return "".join(lines).encode("utf-8")

    def _prepare_parquet(self) -> None:
        pa, _ = _pyarrow()
        fields = []
        if self.ids is not None:
            try:
                self._id_array = pa.array(self.ids)
            except (pa.ArrowException, OverflowError, TypeError) as e:
                raise UsageError(f"the ids cannot be one Parquet column ({_first_line(e)}); use ids of one kind") \
                    from None
            if pa.types.is_null(self._id_array.type):  # no rows: no type to infer
                self._id_array = self._id_array.cast(pa.string())
            fields.append(pa.field("id", self._id_array.type, nullable=False))
        if self.texts is not None:
            fields.append(pa.field("text", pa.string(), nullable=False))
        fields.append(pa.field("embedding", pa.list_(pa.float32(), self.width), nullable=False))
        self._schema = pa.schema(fields)

    def _flush_parquet(self) -> None:
        if not self._pending_rows:
            return
        import numpy as np

        pa, _ = _pyarrow()
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        first, n = self._flushed_rows, block.shape[0]
        columns = []
        if self.ids is not None:
            columns.append(self._id_array.slice(first, n))
        if self.texts is not None:
            columns.append(pa.array(self.texts[first:first + n], type=pa.string()))
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), self.width))
        self._parquet.write_table(pa.Table.from_arrays(columns, schema=self._schema), row_group_size=n)
        self._pending = []
        self._pending_rows = 0
        self._flushed_rows += n

    # -- finishing

    def _commit(self) -> None:
        if self.rows_written != self.count:
            raise RuntimeError(f"internal error: {self.rows_written} of {self.count} rows were written; "
                               f"{self.path} was left as it was")
        assert self._tmp is not None
        try:
            if self._parquet is not None:
                self._flush_parquet()
                self._parquet.close()
                self._parquet = None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if not self.force and (self.path.exists() or self.path.is_symlink()):
                raise UsageError(f"output {self.path} appeared while writing; pass --force to replace it")
            os.replace(self._tmp, self.path)
        except OSError as e:
            raise UsageError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._tmp = None
        self._file = None
        _fsync_directory(self.path.parent)

    def _discard(self) -> None:
        """Close and remove the temporary file; `path` is not touched."""
        if self._parquet is not None:
            try:
                self._parquet.close()  # while the file is still open; pyarrow would otherwise close it when collected
            except Exception:
                pass
            self._parquet = None
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            self._tmp = None


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------------- reading back


def read_embeddings(path: PathLike) -> tuple[Optional[list[Any]], "np.ndarray"]:
    """Read a file written by `EmbeddingWriter`: (ids, or None when it has none; a float32 (rows, width) array)."""
    import numpy as np

    source = Path(path)
    fmt = OUTPUT_FORMATS.get(source.suffix.lower())
    if fmt is None:
        raise UsageError(f"{source} is not an embeddings file; supported are {_supported(OUTPUT_FORMATS)}")
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    if fmt == "npy":
        try:
            array = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"{source} is not a readable .npy file ({_first_line(e)})") from None
        if array.ndim != 2 or array.dtype != np.float32:
            raise UsageError(f"{source} holds a {array.dtype} array of shape {array.shape}, not float32 (rows, width)")
        return None, array
    if fmt == "parquet":
        return _read_parquet_embeddings(source)
    return _read_jsonl_embeddings(source)


def _read_parquet_embeddings(source: Path) -> tuple[Optional[list[Any]], "np.ndarray"]:
    import numpy as np

    pa, pq = _pyarrow()
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, ValueError) as e:
        raise UsageError(f"{source} is not a readable Parquet file ({_first_line(e)})") from None
    if "embedding" not in table.column_names:
        raise UsageError(f"{source} has no column 'embedding'; its columns are: {_names(table.column_names)}")
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or not pa.types.is_float32(column.type.value_type):
        raise UsageError(f"{source} column 'embedding' has type {column.type}, not fixed_size_list<float>")
    if column.null_count:
        raise UsageError(f"{source} column 'embedding' has nulls")
    width = column.type.list_size
    array = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    return ids, array


def _read_jsonl_embeddings(source: Path) -> tuple[Optional[list[Any]], "np.ndarray"]:
    import numpy as np

    ids: list[Any] = []
    rows: list[list[float]] = []
    has_ids: Optional[bool] = None
    try:
        for number, line in _lines(source):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{source} line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("embedding"), list):
                raise UsageError(f"{source} line {number} is not an object with an 'embedding' array")
            if has_ids is None:
                has_ids = "id" in obj
            if has_ids != ("id" in obj):
                raise UsageError(f"{source} line {number}: some lines have an 'id' and some do not")
            if has_ids:
                ids.append(obj["id"])
            rows.append(obj["embedding"])
    except UnicodeDecodeError:
        raise _not_utf8(source) from None
    if rows and len({len(r) for r in rows}) != 1:
        raise UsageError(f"{source}: the embeddings do not all have the same length")
    try:
        array = np.array(rows, dtype=np.float32).reshape(len(rows), len(rows[0]) if rows else 0)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: an embedding holds something other than numbers ({e})") from None
    return (ids if has_ids else None), array
