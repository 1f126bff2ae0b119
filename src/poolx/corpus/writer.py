"""Embedding files, written all or nothing: .npy (the matrix), .parquet and .jsonl (rows with an optional `id` and
`text`), rows appended as they come, without knowing their number in advance."""

from __future__ import annotations

import operator
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import orjson

from poolx.corpus._common import OUTPUT_FORMATS, ArrowIds, pyarrow, supported
from poolx.errors import PoolxError, UsageError
from poolx.staging import hold, sweep_stale, temp_prefix

if TYPE_CHECKING:
    import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

_PARQUET_GROUP_BYTES = 8 << 20  # embedding bytes per Parquet row group (held until written: 5,461 rows at 384 wide)


def check_output(
    path: PathLike, force: bool = False, input_path: Optional[PathLike] = None, ids: bool = False,
) -> Path:
    """Refuse an output path that cannot or must not be written, before any work is done: an unknown extension, a
    directory, a missing parent directory, the input file itself, an existing file without `force`, and (`ids`)
    a .npy output for a corpus with ids."""
    out = Path(path)
    suffix = out.suffix.lower()
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; name a file ending in {supported(OUTPUT_FORMATS)}")
    if suffix not in OUTPUT_FORMATS:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise UsageError(f"output {out} has {what}; supported outputs are {supported(OUTPUT_FORMATS)}")
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"the directory of output {out} ({parent}) does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {out}: directory {parent} is not writable; choose another output")
    if input_path is not None and _same_file(out, Path(input_path)):
        raise UsageError(f"output {out} is the input file; write the embeddings to another file")
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"output {out} exists; pass --force to replace it, or choose another output file")
    if ids and OUTPUT_FORMATS[suffix] == "npy":
        raise UsageError("--id-column needs a .parquet or .jsonl output (.npy holds only the vectors, in input order)")
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
    """Write embeddings of `width` floats to `path` (.npy, .parquet or .jsonl), all or nothing.

    Use it as a context manager and call `write(vectors, ids=..., texts=...)` with consecutive blocks of rows; their
    number need not be known in advance (`count`, when given, is checked). Rows go to a hidden temporary file
    beside `path` (`.NAME.tmp-PID-XXXX`, locked while written), which is fsynced and moved onto `path` only when
    the block exits without an error; otherwise (KeyboardInterrupt included, and SIGTERM where
    `poolx.staging.interrupt_on_sigterm` is installed) it is removed and `path`, if it existed, is left as it was.
    The temporaries of killed runs on `path` are removed on entry (`poolx.staging.sweep_stale`). With
    `ids` (and `texts`) every block brings its ids (texts), written as an `id` (`text`) field of .parquet and
    .jsonl rows; .npy holds the matrix only. Vectors must be finite. Floats in .jsonl are the shortest decimal
    that reads back (through a float64, as JSON readers do) to the same float32 bits.
    """

    def __init__(self, path: PathLike, width: int, *, ids: bool = False, texts: bool = False,
                 count: Optional[int] = None, force: bool = False) -> None:
        self.path = check_output(path, force)
        self.format = OUTPUT_FORMATS[self.path.suffix.lower()]
        width = operator.index(width)
        count = None if count is None else operator.index(count)
        if width < 1 or (count is not None and count < 0):
            raise ValueError(f"width must be >= 1 and count >= 0, got width={width} count={count}")
        if ids and self.format == "npy":
            raise ValueError("a .npy output holds no ids")
        self.width = width
        self.count = count
        self.ids = ids
        self.texts = texts
        self.force = force
        self.rows_written = 0
        self._tmp: Optional[Path] = None
        self._file: Any = None
        self._npy_header = 0  # bytes of the .npy header
        self._parquet: Any = None  # pyarrow.parquet.ParquetWriter
        self._arrow_ids = ArrowIds()
        self._pending: list[tuple[Any, Any, Any]] = []  # Arrow (embeddings, ids, texts) for the next row group
        self._pending_rows = 0
        self._used = False

    # -- context

    def __enter__(self) -> "EmbeddingWriter":
        if self._used:
            raise RuntimeError("internal error: an EmbeddingWriter can be used for one `with` block only")
        self._used = True
        sweep_stale(self.path)  # what a killed run on this output left (poolx.staging)
        try:
            fd, name = tempfile.mkstemp(prefix=temp_prefix(self.path), dir=self.path.parent)
        except OSError as e:
            raise UsageError(f"cannot create a file in {self.path.parent}: {e.strerror or e}") from None
        hold(fd)  # locked while this process writes it: a later run removes it only once the lock is free
        self._tmp = Path(name)
        try:
            self._file = os.fdopen(fd, "wb")
            os.chmod(name, 0o666 & ~_umask())
            if self.format == "npy":
                self._write_npy_header(0)
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

    def write(self, vectors: "np.ndarray", ids: Optional[Sequence[Any]] = None,
              texts: Optional[Sequence[str]] = None) -> None:
        """Append rows: `vectors` (n, width), with their n `ids` and `texts` when the writer was made with them."""
        import numpy as np

        if self._file is None:
            raise RuntimeError("internal error: EmbeddingWriter.write called outside its `with` block")
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.width or array.dtype.kind != "f":
            raise RuntimeError(f"internal error: expected a float array of shape (n, {self.width}), got "
                               f"{array.dtype} {array.shape}")
        n = array.shape[0]
        start = self.rows_written
        if self.count is not None and start + n > self.count:
            raise RuntimeError(f"internal error: rows {start}..{start + n - 1} go past the {self.count} rows "
                               f"declared")
        for what, given, wanted in (("ids", ids, self.ids), ("texts", texts, self.texts)):
            if (given is not None) != wanted or (given is not None and len(given) != n):
                raise RuntimeError(f"internal error: {n} rows came with {'no' if given is None else len(given)} "
                                   f"{what}; the writer {'takes' if wanted else 'takes no'} {what}")
        if n == 0:
            return
        array = np.ascontiguousarray(array, dtype="<f4")
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise PoolxError(f"the embedding of row {row} contains NaN or inf; nothing was written to {self.path}")
        ids = None if ids is None else _plain(ids)
        try:
            if self.format == "npy":
                self._file.write(memoryview(array).cast("B"))
            elif self.format == "jsonl":
                self._file.write(_jsonl_rows(array, ids, None if texts is None else list(texts)))
            else:
                pa, _ = pyarrow()
                self._pending.append((
                    pa.FixedSizeListArray.from_arrays(pa.array(array.ravel(), type=pa.float32()), self.width),
                    None if ids is None else self._arrow_ids.array(ids),
                    None if texts is None else pa.array(list(texts), type=pa.string()),
                ))
                self._pending_rows += n
                if self._pending_rows >= max(1, _PARQUET_GROUP_BYTES // (4 * self.width)):
                    self._flush_parquet()
        except OSError as e:
            raise UsageError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.rows_written += n

    # -- formats

    def _write_npy_header(self, rows: int) -> None:
        """numpy's header (version 1.0), which numpy pads so that the row count can be rewritten in place."""
        from numpy.lib import format as npy_format

        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, self.width)}
        npy_format.write_array_header_1_0(self._file, header)
        size = self._file.tell()
        if self._npy_header and size != self._npy_header:  # numpy reserves 21 digits for the row count
            raise RuntimeError(f"internal error: the .npy header grew from {self._npy_header} to {size} bytes")
        self._npy_header = size

    def _flush_parquet(self) -> None:
        """Write the pending blocks as one row group (Arrow chunks, not concatenated: no copy)."""
        if not self._pending_rows:
            return
        pa, pq = pyarrow()
        columns, fields = [], []
        if self.ids:
            columns.append(pa.chunked_array([p[1] for p in self._pending], type=self._arrow_ids.type))
            fields.append(pa.field("id", self._arrow_ids.type, nullable=False))
        if self.texts:
            columns.append(pa.chunked_array([p[2] for p in self._pending], type=pa.string()))
            fields.append(pa.field("text", pa.string(), nullable=False))
        embedding = pa.list_(pa.float32(), self.width)
        columns.append(pa.chunked_array([p[0] for p in self._pending], type=embedding))
        fields.append(pa.field("embedding", embedding, nullable=False))
        schema = pa.schema(fields)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._file, schema, use_dictionary=False)
        self._parquet.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=self._pending_rows)
        self._pending = []
        self._pending_rows = 0

    def _open_empty_parquet(self) -> None:
        pa, pq = pyarrow()
        fields = []
        if self.ids:
            fields.append(pa.field("id", self._arrow_ids.type or pa.string(), nullable=False))
        if self.texts:
            fields.append(pa.field("text", pa.string(), nullable=False))
        fields.append(pa.field("embedding", pa.list_(pa.float32(), self.width), nullable=False))
        self._parquet = pq.ParquetWriter(self._file, pa.schema(fields), use_dictionary=False)

    # -- finishing

    def _commit(self) -> None:
        if self.count is not None and self.rows_written != self.count:
            raise RuntimeError(f"internal error: {self.rows_written} of {self.count} rows were written; "
                               f"{self.path} was left as it was")
        assert self._tmp is not None
        try:
            if self.format == "parquet":
                self._flush_parquet()
                if self._parquet is None:  # no rows
                    self._open_empty_parquet()
                self._parquet.close()
                self._parquet = None
            elif self.format == "npy":
                self._file.seek(0)
                self._write_npy_header(self.rows_written)
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


def _plain(ids: Sequence[Any]) -> list[Any]:
    """Ids as Python values (numpy arrays and scalars included)."""
    if hasattr(ids, "tolist"):
        return list(ids.tolist())  # type: ignore[union-attr]
    return [v.item() if hasattr(v, "item") else v for v in ids]


_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# The float32 values whose shortest decimal (what orjson, numpy and every shortest-digits algorithm print) reads
# back through a float64, as JSON readers read it, as the neighbouring float32 (double rounding): an exhaustive run
# over all 2**32 bit patterns found exactly these, +-7.038531e-26 (benchmarks/RESULTS.md, 2026-12-03).
_DOUBLE_ROUNDED = 0x15AE43FD  # sign bit masked off


def _jsonl_rows(array: "np.ndarray", ids: Optional[list[Any]], texts: Optional[list[str]]) -> bytes:
    """One JSON object per row; each float32 in its shortest form that reads back to the same bits (the two that
    would not are written as their exact float64 value, which always reads back exactly)."""
    import numpy as np

    rows = orjson.dumps(array, option=_NUMPY)[2:-2].split(b"],[")  # numbers hold no brackets
    for i in np.flatnonzero(((array.view(np.uint32) & 0x7FFFFFFF) == _DOUBLE_ROUNDED).any(axis=1)):
        rows[i] = b",".join(orjson.dumps(float(x)) if (int(x.view(np.uint32)) & 0x7FFFFFFF) == _DOUBLE_ROUNDED
                            else orjson.dumps(x, option=_NUMPY) for x in array[i])
    if ids is None and texts is None:
        return b"".join(b'{"embedding":[' + row + b"]}\n" for row in rows)
    lines = []
    for i, row in enumerate(rows):
        head = b"{"
        if ids is not None:
            head += b'"id":' + orjson.dumps(ids[i]) + b","
        if texts is not None:
            head += b'"text":' + orjson.dumps(texts[i]) + b","
        lines.append(head + b'"embedding":[' + row + b"]}\n")
    return b"".join(lines)


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
