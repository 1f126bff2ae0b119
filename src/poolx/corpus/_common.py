"""Shared pieces of poolx.corpus: the formats, the wording of one-line errors, and lazy imports of pyarrow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from poolx.errors import UsageError, first_line

# The input formats, the same for `poolx embed` and `poolx embed --engine ray` (see the package docstring).
INPUT_FORMATS = {
    ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet",
}
OUTPUT_FORMATS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl"}

_MAX_LISTED = 20  # columns or fields named in an error message
ID_KINDS = {"string": "strings", "number": "numbers", "boolean": "booleans"}


def supported(formats: dict[str, str]) -> str:
    return ", ".join(formats)


def names(values: Sequence[Any]) -> str:
    """`'a', 'b', 'c'` for an error message, cut after `_MAX_LISTED` names."""
    shown = ", ".join(repr(n) for n in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "") if values else "(none)"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def flag(name: str, column: str, id_column: Optional[str]) -> str:
    return "--id-column" if name == id_column and name != column else "--column"


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("Parquet files need pyarrow; install it with `pip install pyarrow`") from None
    return pa, pq


def is_string(pa: Any, type_: Any) -> bool:
    is_view = getattr(pa.types, "is_string_view", lambda t: False)
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or is_view(type_))


def not_utf8(path: Path) -> UsageError:
    """The error for a file that is not UTF-8, naming the first bad byte's line and offset (read again in blocks of
    1 MiB, so a file without line ends is not read whole; a pipe or a device, which cannot be read again, is named
    alone)."""
    import codecs

    fixed = path.with_name(path.stem + ".utf8" + path.suffix)
    fix = f"convert it first, e.g. iconv -f LATIN1 -t UTF-8 {path} > {fixed}"
    if not path.is_file():
        return UsageError(f"{path} is not UTF-8; {fix}")
    offset, line, carry = 0, 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            data = carry + block
            try:  # final=False keeps a character cut by the block's end for the next block
                _, consumed = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as e:
                line += data.count(b"\n", 0, e.start)  # a \n byte never occurs inside a multi-byte character
                return UsageError(f"{path} is not UTF-8: byte 0x{data[e.start]:02x} at line {line} (byte offset "
                                  f"{offset + e.start}) cannot be decoded; {fix}")
            line += data.count(b"\n", 0, consumed)
            offset += consumed
            carry = data[consumed:]
            if not block:
                break
    return UsageError(f"{path} is not UTF-8; {fix}")


def check_id_value(path: Path, value: Any, first_kind: Optional[str], where: str) -> str:
    """The kind of id `value` ("string", "number" or "boolean"); refuses a kind other than `first_kind` (the first
    id's), a non-finite number and an integer beyond 64 bits."""
    kind = json_kind(value)
    if first_kind is not None and kind != first_kind:
        raise UsageError(f"{path} {where}: id {short(value)} is a {kind} but the first id is a {first_kind}; "
                         f"ids must all be {ID_KINDS.get(first_kind, 'one kind')}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{path} {where}: id {value!r} is not a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        raise UsageError(f"{path} {where}: id {value} does not fit in 64 bits; write it as a string")
    return kind


class ArrowIds:
    """Ids as Arrow arrays of one type across batches (a Parquet column, a Ray block column): the type is what
    pyarrow infers for the first batch, and later batches must fit it."""

    def __init__(self, type_: Any = None) -> None:
        self.type = type_

    def array(self, ids: Sequence[Any]) -> Any:
        pa, _ = pyarrow()
        try:
            array = pa.array(ids)
            if self.type is not None and array.type != self.type:
                numbers = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in (array.type, self.type)]
                if not (all(numbers) or pa.types.is_null(array.type)):
                    raise TypeError(f"ids of type {array.type} after ids of type {self.type}")
                array = array.cast(self.type, safe=True)  # 1.5 after integers, or 2**63 after int64: an error
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
            raise UsageError(f"the ids cannot be one Arrow column ({first_line(e)}); use ids of one kind (write "
                             f"numbers that mix integers and fractions, or exceed 63 bits, as strings)") from None
        if self.type is None:
            if pa.types.is_null(array.type):  # no rows: no type to infer
                array = array.cast(pa.string())
            self.type = array.type
        return array
