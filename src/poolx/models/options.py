"""Pooler options, declared once and typed: each pooler's registry entry lists its `Option`s, and its config, its
help in `poolx poolers`, its `poolx export` flags and its validation all derive from them.

Torch-free on purpose: `poolx export --help` shows every pooler's flags without importing torch.

Bounds that depend on the backbone are written with `L`, the backbone's number of transformer layers
(hidden_states has L+1 entries, embeddings first): `Option("layer", int, -2, ..., min=-(L + 1), max=L)` is a
hidden_states index that may count from the top; `min=0, max=L` one that may not. They are checked when the
pooler is built for a backbone (`validate(value, num_layers)`); without a backbone (`num_layers=None`) only the
type, the fixed bounds and the choices are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from poolx.errors import UsageError

INT_LIST = "int_list"  # the type of an option that takes a list of ints (the CLI reads it comma-separated)
STR_LIST = "str_list"  # a list of strings, each one of the option's choices (comma-separated on the CLI)
LIST_TYPES = (INT_LIST, STR_LIST)
TYPES: dict[Any, str] = {int: "int", float: "float", str: "str", INT_LIST: "int_list", STR_LIST: "str_list"}


@dataclass(frozen=True)
class LayerBound:
    """`coef·L + const`, L being the backbone's number of transformer layers. Build it from `L`: `L`, `-(L + 1)`."""

    coef: int = 1
    const: int = 0

    def resolve(self, num_layers: int) -> int:
        return self.coef * num_layers + self.const

    def __add__(self, other: int) -> "LayerBound":
        return LayerBound(self.coef, self.const + int(other))

    __radd__ = __add__

    def __sub__(self, other: int) -> "LayerBound":
        return LayerBound(self.coef, self.const - int(other))

    def __neg__(self) -> "LayerBound":
        return LayerBound(-self.coef, -self.const)

    def __str__(self) -> str:
        if self.coef == 0:
            return str(self.const)
        if self.coef < 0:
            return f"-({-self})" if self.const else f"-{-self}"
        head = "L" if self.coef == 1 else f"{self.coef}L"
        return head if not self.const else f"{head}{self.const:+d}"


L = LayerBound()  # the backbone's number of transformer layers
Bound = Union[int, float, LayerBound, None]


def _resolve(bound: Bound, num_layers: int | None) -> int | float | None:
    if isinstance(bound, LayerBound):
        return None if num_layers is None else bound.resolve(num_layers)
    return bound


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Option:
    """One pooler option: its name (a Python identifier; the flag is `--name-with-dashes`), its type (int, float,
    str, INT_LIST or STR_LIST), its default, a short help text, and what values are valid: `choices`, and inclusive
    bounds `min`/`max` (numbers, or `L` expressions for hidden_states indices), `max_exclusive` for a half-open
    range. For the list types the bounds and choices hold for every entry and the list must not be empty."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    min: Bound = None
    max: Bound = None
    max_exclusive: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} must be a Python identifier (the flag is --{self.name})")
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: type must be int, float, str, INT_LIST or STR_LIST, got {self.type!r}")
        if self.type in LIST_TYPES and self.default is not None:
            object.__setattr__(self, "default", tuple(self.default))
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            self.validate(self.default)  # a default that its own declaration refuses is a bug, caught at import

    # ---- names -------------------------------------------------------------------------------------------------
    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        return TYPES[self.type]

    @property
    def cli_type(self) -> type:
        """What Typer parses the flag as: int, float or str (a list arrives as a comma-separated str)."""
        return str if self.type in LIST_TYPES else self.type

    @property
    def layer_dependent(self) -> bool:
        return isinstance(self.min, LayerBound) or isinstance(self.max, LayerBound)

    # ---- descriptions ------------------------------------------------------------------------------------------
    def default_text(self) -> str:
        if self.type in LIST_TYPES:
            return ",".join(str(v) for v in self.default)
        return _number(self.default) if isinstance(self.default, (int, float)) else str(self.default)

    def range_text(self, num_layers: int | None = None) -> str:
        """The valid values in a few characters: `0..L`, `0..4 or -5..-1`, `>= 1`, `[0, 1)`, `cls|mean`."""
        if self.choices is not None:
            return "|".join(str(c) for c in self.choices)
        lo, hi = self.min, self.max
        if num_layers is not None:
            lo, hi = _resolve(lo, num_layers), _resolve(hi, num_layers)
        if self.type is float:
            left = "(-inf" if lo is None else f"[{_number(lo)}"
            right = "inf)" if hi is None else f"{_number(hi)}{')' if self.max_exclusive else ']'}"
            return f"{left}, {right}"
        if lo is None and hi is None:
            return "any integer"
        if hi is None:
            return f">= {lo}"
        if lo is None:
            return f"<= {hi}" if not self.max_exclusive else f"< {hi}"
        if isinstance(lo, int) and isinstance(hi, int) and lo < 0 <= hi and hi == -lo - 1:
            return f"0..{hi} or {lo}..-1"  # an index that may count from the top
        if isinstance(lo, LayerBound) and isinstance(hi, LayerBound) and hi == L and lo == -(L + 1):
            return "0..L or -(L+1)..-1"
        return f"{lo}..{hi}" + (" (exclusive)" if self.max_exclusive else "")

    def expects(self) -> str:
        """What a valid value is, as a noun phrase for error messages."""
        if self.type == STR_LIST:
            return "a non-empty list of " + ", ".join(repr(c) for c in self.choices or ()) + " (comma-separated)"
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is str:
            return "a string"
        if self.type is float:
            return f"a number in {self.range_text()}"
        entry = "integers" if self.type == INT_LIST else "an integer"
        if self.min == 1 and self.max is None:
            entry = "positive integers" if self.type == INT_LIST else "a positive integer"
        elif self.min is not None or self.max is not None:
            entry += f" in {self.range_text()}" if self.min is not None and self.max is not None else f" {self.range_text()}"
        return f"a non-empty list of {entry}" if self.type == INT_LIST else entry

    def describe(self) -> str:
        """One help line: what it is, its valid values and its default."""
        rng = "" if self.type in (str, STR_LIST) and self.choices is None else f"{self.range_text()}, "
        return f"{self.help} ({rng}default {self.default_text()})"

    # ---- parsing and validation --------------------------------------------------------------------------------
    def parse(self, text: Any) -> Any:
        """A CLI value -> the option's type (ints from a comma-separated list for INT_LIST); None stays None.
        Range checks are `validate`'s."""
        if text is None:
            return None
        if self.type == INT_LIST:
            return parse_int_list(text, self.flag) if isinstance(text, str) else text
        if self.type == STR_LIST:
            return [v.strip() for v in text.split(",") if v.strip()] if isinstance(text, str) else text
        if isinstance(text, str) and self.type is not str:
            try:
                return self.type(text)
            except ValueError:
                raise UsageError(f"{self.flag} must be {self.expects()}, got {text!r}") from None
        return text

    def validate(self, value: Any, num_layers: int | None = None) -> Any:
        """The value as the option's type (a list for INT_LIST, float for float), or a UsageError naming the
        option and its valid values. Bounds with `L` are checked only when num_layers is given."""
        if self.type == INT_LIST:
            if isinstance(value, (str, bytes, int, float)) or not isinstance(value, Sequence) or len(value) == 0:
                raise UsageError(f"{self.name} must be {self.expects()}, got {value!r}")
            return [self._check_int(v, num_layers, f"{self.name} entry") for v in value]
        if self.type == STR_LIST:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0 or any(
                not isinstance(v, str) or (self.choices is not None and v not in self.choices) for v in value
            ):
                raise UsageError(f"{self.name} must be {self.expects()}, got {value!r}")
            return list(value)
        if self.type is int:
            return self._check_int(value, num_layers, self.name)
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise UsageError(f"{self.name} must be {self.expects()}, got {value!r}")
            value = float(value)
            if not self._within(value, num_layers):
                raise UsageError(f"{self.name} must be {self.expects()}, got {value!r}")
            return value
        if not isinstance(value, str):
            raise UsageError(f"{self.name} must be {self.expects()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{self.name} must be {self.expects()}, got {value!r}")
        return value

    def _check_int(self, value: Any, num_layers: int | None, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON written by other tools may hold 4.0
            else:
                raise UsageError(f"{what} must be an integer, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{what} must be {self.expects()}, got {value!r}")
        if not self._within(value, num_layers):
            if self.layer_dependent and num_layers is not None:
                raise UsageError(
                    f"{what} {value} is out of range: this backbone has {num_layers + 1} hidden states "
                    f"(embeddings + {num_layers} layers); use {self.range_text(num_layers)}"
                )
            raise UsageError(f"{what} must be {self.expects()}, got {value!r}")
        return value

    def _within(self, value: float, num_layers: int | None) -> bool:
        lo, hi = _resolve(self.min, num_layers), _resolve(self.max, num_layers)
        if lo is not None and value < lo:
            return False
        if hi is not None and (value >= hi if self.max_exclusive else value > hi):
            return False
        return True


def validate_options(
    pooler: str, declared: Sequence[Option], options: dict[str, Any], num_layers: int | None = None
) -> dict[str, Any]:
    """Every declared option's value (given, or its default), validated; options left as None take the default.
    An option the pooler does not declare is refused, naming the ones it takes."""
    given = {k: v for k, v in options.items() if v is not None}
    names = {o.name for o in declared}
    unknown = sorted(set(given) - names)
    if unknown:
        takes = ", ".join(o.flag for o in declared) or "no options"
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise UsageError(f"pooler {pooler!r} does not take {flags}; it takes: {takes} (see `poolx poolers`)")
    values = {}
    for option in declared:
        value = given.get(option.name, option.default)
        values[option.name] = option.validate(list(value) if option.type in LIST_TYPES else value, num_layers)
    return values


def parse_int_list(text: str, flag: str) -> list[int]:
    """"-1,-2" (or "-1 -2", "-1, -2") -> [-1, -2]; a one-line UsageError naming `flag` otherwise, an empty item
    ("-1,,-2", "-1,") included."""
    import re

    if not text.replace(",", "").strip():
        raise UsageError(f"{flag} must list at least one integer, got {text!r}")
    try:
        return [int(v) for v in re.split(r"\s*,\s*|\s+", text.strip())]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers with none left empty, got {text!r}") from None
