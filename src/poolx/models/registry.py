"""One registry of poolers, read by the factory, the CLI and the tests. Torch-free: an entry names its class as
"module:Class" and declares its options, so `poolx export --help` lists every pooler flag without importing torch,
and a pooler's module is imported only when the pooler is built.

A new built-in pooler is one file under poolers/ (a `Pooler` subclass) plus a `PoolerSpec` in BUILTIN below.
Third-party poolers register their class at runtime with `@register_pooler(name, options=(...), reads=...)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from poolx.errors import UnknownPoolerError
from poolx.models.options import INT_LIST, LIST_TYPES, STR_LIST, Option, L, validate_options

if TYPE_CHECKING:  # pragma: no cover
    from poolx.models.base import Pooler

READS = ("last_hidden_state", "hidden_states", "pooler_output")
ST_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")  # sentence-transformers' order
WIDTHS = ("D", "2·D", "k·D")  # or the name of the option that sets the width


@dataclass(frozen=True)
class PoolerSpec:
    """A registry entry.

    - `target`: the class, as "module:Class" (imported when the pooler is first built) or the class itself;
    - `options`: its options, declared once (see poolx.models.options);
    - `reads`: last_hidden_state, hidden_states or pooler_output (what the backbone must hand it);
    - `width`: its output width: "D", "2·D", "k·D" (k = the length of its list option), or the name of the option that sets it;
    - `notebook`: the name of its counterpart in the Kaggle notebook's code (kept in tests/notebook_reference.py
      and tests/wk_reference.py), which tests/test_notebook_parity.py compares it with; or `poolx_only=True`.
    """

    name: str
    target: Any
    options: tuple[Option, ...] = ()
    reads: str = "last_hidden_state"
    width: str = "D"
    notebook: str | None = None
    poolx_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if self.reads not in READS:
            raise ValueError(f"pooler {self.name!r}: reads must be one of {', '.join(READS)}, got {self.reads!r}")
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"pooler {self.name!r} declares an option twice: {names}")
        if self.width not in WIDTHS and self.width not in names:
            raise ValueError(
                f"pooler {self.name!r}: width must be one of {', '.join(WIDTHS)} or one of its options, got {self.width!r}"
            )
        if self.width == "k·D" and [o.type in LIST_TYPES for o in self.options].count(True) != 1:
            raise ValueError(f"pooler {self.name!r}: width k·D needs exactly one list option (k = its length)")

    @property
    def needs_hidden_states(self) -> bool:
        return self.reads == "hidden_states"

    @property
    def needs_pooler_output(self) -> bool:
        return self.reads == "pooler_output"

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {o.name: list(o.default) if o.type in LIST_TYPES else o.default for o in self.options}

    def validate(self, options: dict[str, Any], num_layers: int | None = None) -> dict[str, Any]:
        """Every option's value (defaults filled in), validated for a backbone of `num_layers` layers (None:
        without the bounds that depend on it). Unknown options and bad values raise UsageError."""
        return validate_options(self.name, self.options, options, num_layers)

    def width_of(self, width: int, options: dict[str, Any]) -> int:
        """The output width the declaration promises for a backbone of hidden size `width` and these (validated)
        options; tests hold every pooler's `output_dim` to it."""
        if self.width == "D":
            return width
        if self.width == "2·D":
            return 2 * width
        if self.width == "k·D":
            (listed,) = [o.name for o in self.options if o.type in LIST_TYPES]
            return len(options[listed]) * width
        return int(options[self.width])

    def load(self) -> "type[Pooler]":
        """The pooler's class (importing its module the first time), with this spec attached."""
        cls = self.target
        if isinstance(cls, str):
            module, _, qualname = cls.partition(":")
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            cls = obj
        _attach(cls, self)
        return cls


def _target_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _attach(cls: type, spec: PoolerSpec) -> None:
    current = cls.__dict__.get("spec")
    if current is not None and current is not spec:
        if current.name == spec.name:
            return
        raise ValueError(f"{cls.__qualname__} is already registered as pooler {current.name!r}")
    cls.spec = spec
    cls.name = spec.name
    cls.reads = spec.reads
    cls.needs_hidden_states = spec.needs_hidden_states
    cls.needs_pooler_output = spec.needs_pooler_output


def _positive(name: str, default: int, help: str) -> Option:
    return Option(name, int, default, help, min=1)


DROPOUT = Option("dropout", float, 0.1, "dropout on the output, active only in training", min=0.0, max=1.0, max_exclusive=True)
_POOLERS = "poolx.models.poolers"

BUILTIN: tuple[PoolerSpec, ...] = (
    PoolerSpec("pooler", f"{_POOLERS}.tokens:BackbonePooler", reads="pooler_output", notebook="pooler_output"),
    PoolerSpec("cls", f"{_POOLERS}.tokens:ClsPooler", notebook="cls_pooling"),
    PoolerSpec("mean", f"{_POOLERS}.tokens:MeanPooler", notebook="mean_pooling"),
    PoolerSpec("max", f"{_POOLERS}.tokens:MaxPooler", notebook="max_pooling"),
    PoolerSpec("mean-max", f"{_POOLERS}.tokens:MeanMaxPooler", width="2·D", notebook="mean_max_pooling"),
    PoolerSpec("last", f"{_POOLERS}.tokens:LastTokenPooler", poolx_only=True),
    PoolerSpec(
        "st", f"{_POOLERS}.tokens:SentenceTransformersPooler", width="k·D", poolx_only=True,
        options=(Option("modes", STR_LIST, ("mean",), "sentence-transformers Pooling modes, concatenated in this "
                        "order", choices=ST_MODES),),
    ),
    PoolerSpec(
        "conv1d", f"{_POOLERS}.conv:Conv1dPooler", width="out_channels", notebook="conv1d_pooling",
        options=(
            _positive("channels", 256, "channels of the first convolution"),
            _positive("out_channels", 1, "channels of the second convolution = output width"),
            _positive("kernel_size", 2, "kernel size of both convolutions, padding kernel_size-1"),
        ),
    ),
    PoolerSpec(
        "layer-cls", f"{_POOLERS}.layers:LayerClsPooler", reads="hidden_states", notebook="hidden_states_cls",
        options=(Option("layer", int, -2, "hidden_states index, embeddings = 0, negative counts from the top",
                        min=-(L + 1), max=L),),
    ),
    PoolerSpec(
        "concat", f"{_POOLERS}.layers:ConcatPooler", reads="hidden_states", width="k·D", notebook="concatenate_pooling",
        options=(Option("layers", INT_LIST, (-1, -2, -3, -4), "hidden_states indices to concatenate, in order, "
                        "comma-separated", min=-(L + 1), max=L),),
    ),
    PoolerSpec(
        "weighted", f"{_POOLERS}.layers:WeightedLayerPooler", reads="hidden_states", notebook="WeightedLayerPooling",
        options=(
            Option("layer_start", int, 4, "first hidden_states index averaged", min=0, max=L),
            Option("token", str, "cls", "cls takes the first token of the weighted average, mean its masked mean",
                   choices=("cls", "mean")),
        ),
    ),
    PoolerSpec(
        "lstm", f"{_POOLERS}.recurrent:LSTMPooler", reads="hidden_states", width="hidden_size", notebook="LSTMPooling",
        options=(_positive("hidden_size", 256, "LSTM hidden size = output width"), DROPOUT),
    ),
    PoolerSpec(
        "attention", f"{_POOLERS}.attention:AttentionPooler", reads="hidden_states", width="hidden_size",
        notebook="AttentionPooling",
        options=(_positive("hidden_size", 128, "projection size = output width"), DROPOUT),
    ),
    PoolerSpec(
        "wk", f"{_POOLERS}.sbert_wk:SBertWKPooler", reads="hidden_states", notebook="WKPooling",
        options=(
            Option("layer_start", int, 4, "first hidden_states index used", min=0, max=L),
            _positive("window", 2, "context window: layers on each side"),
            Option("compute", str, "float64", "dtype of the Gram computations", choices=("float64", "float32")),
        ),
    ),
)

SPECS: dict[str, PoolerSpec] = {}


def add_spec(spec: PoolerSpec) -> PoolerSpec:
    """Register a spec. A name registered twice, or an option name with another type than the same option of
    another pooler (the CLI has one flag per option name), is an error."""
    if spec.name in SPECS:
        raise ValueError(f"pooler {spec.name!r} is already registered ({SPECS[spec.name].target!r})")
    for option in spec.options:
        for other in SPECS.values():
            for theirs in other.options:
                if theirs.name == option.name and theirs.type != option.type:
                    raise ValueError(
                        f"pooler {spec.name!r}: option {option.name!r} is {option.type_name} but pooler "
                        f"{other.name!r} declares it {theirs.type_name}; one option name has one type "
                        "(poolx export has one flag per name)"
                    )
    SPECS[spec.name] = spec
    return spec


for _spec in BUILTIN:
    add_spec(_spec)

P = TypeVar("P", bound=type)


def register_pooler(
    name: str, *, options: Sequence[Option] | None = None, reads: str | None = None, width: str | None = None,
    notebook: str | None = None,
) -> Callable[[P], P]:
    """Class decorator for a `Pooler` subclass defined outside poolx: `@register_pooler("mine", options=(Option(
    "size", int, 64, "projection size", min=1),), reads="hidden_states", width="size")`. Options and reads default to
    the class attributes `options` (a tuple of Option) and `reads`; width defaults to "D". Its constructor is
    Pooler's: `(width, num_layers, **options)`; modules and parameters go in `build()`. A name registered twice
    is an error. Poolers registered at runtime are created, listed and exported like built-ins, but get no
    `poolx export` flags (the command line is built before they exist)."""

    def add(cls: P) -> P:
        declared = options if options is not None else cls.__dict__.get("options", ())
        if isinstance(declared, dict) or not all(isinstance(o, Option) for o in declared):
            raise TypeError(
                f"pooler {name!r}: options must be a sequence of poolx.models.options.Option, got {declared!r}"
            )
        spec = PoolerSpec(
            name, cls, tuple(declared), reads=reads or getattr(cls, "reads", None) or "last_hidden_state",
            width=width or "D", notebook=notebook, poolx_only=notebook is None,
        )
        existing = _registered(cls)
        if existing is not None:
            raise ValueError(f"pooler {name!r}: {cls.__qualname__} is already registered as {existing.name!r}")
        add_spec(spec)
        _attach(cls, spec)
        return cls

    return add


def unregister_pooler(name: str) -> None:
    """Remove a pooler registered at runtime (tests, notebooks). Built-ins cannot be removed."""
    if any(s.name == name for s in BUILTIN):
        raise ValueError(f"pooler {name!r} is built in")
    spec = SPECS.pop(name)
    if isinstance(spec.target, type) and spec.target.__dict__.get("spec") is spec:
        del spec.target.spec


def list_poolers() -> list[str]:
    return list(SPECS)


def pooler_specs() -> tuple[PoolerSpec, ...]:
    return tuple(SPECS.values())


def get_spec(name_or_cls: str | type) -> PoolerSpec:
    """The registry entry of a pooler name (or a registered class)."""
    if isinstance(name_or_cls, type):
        return spec_of_class(name_or_cls)
    try:
        return SPECS[name_or_cls]
    except KeyError:
        raise UnknownPoolerError(
            f"unknown pooler {name_or_cls!r}; choose one of: {', '.join(SPECS)} (see `poolx poolers`)"
        ) from None


def _registered(cls: type) -> PoolerSpec | None:
    spec = cls.__dict__.get("spec")
    if isinstance(spec, PoolerSpec):
        return spec
    path = _target_path(cls)
    for spec in SPECS.values():
        if spec.target is cls or spec.target == path:
            _attach(cls, spec)
            return spec
    return None


def spec_of_class(cls: type) -> PoolerSpec:
    """The spec of a pooler class: attached at registration or when first built; a built-in class used directly
    (`MeanPooler(width=8, num_layers=2)`) is found by its path, an unregistered subclass gets its parent's."""
    for klass in cls.__mro__:
        spec = _registered(klass)
        if spec is not None:
            return spec
    raise UnknownPoolerError(
        f"{cls.__qualname__} is not a registered pooler; register it with @register_pooler(name, options=...)"
    )


def get_pooler_class(name_or_cls: "str | type[Pooler]") -> "type[Pooler]":
    if isinstance(name_or_cls, type):
        spec_of_class(name_or_cls)
        return name_or_cls
    return get_spec(name_or_cls).load()


def create_pooler(name_or_cls: "str | type[Pooler]", *, width: int, num_layers: int, **options: Any) -> "Pooler":
    """Build a pooler for a backbone of hidden size `width` with `num_layers` transformer layers. Options left
    as None take their defaults; unknown options and bad values raise UsageError (see `Pooler.__init__`)."""
    cls = get_pooler_class(name_or_cls)
    return cls(width, num_layers, **options)


@dataclass(frozen=True)
class PoolerDescription:
    """What `poolx poolers` shows of a pooler."""

    name: str
    summary: str  # the first sentence of its docstring
    reads: str
    width: str  # "D", "2·D", "k·D" or "--hidden-size (default 256)"
    learned: str  # "yes", "no", "backbone's"
    options: tuple[str, ...]  # "--flag: help; range (default x)"


def _first_sentence(text: str) -> str:
    import re

    for match in re.finditer(r"\.(\s|$)", text):
        if not re.search(r"\b(i\.e|e\.g|etc|cf)$", text[: match.start()]):
            return text[: match.start() + 1]
    return text


def describe_poolers() -> list[PoolerDescription]:
    """Every registered pooler, for `poolx poolers`. Builds each with its defaults (imports torch)."""
    out = []
    for spec in pooler_specs():
        cls = spec.load()
        sample = cls(1000, 12)  # a 12-layer, D=1000 backbone: every default fits it
        paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        summary = _first_sentence(paragraph)
        if spec.width in WIDTHS:
            width = spec.width
        else:
            option = spec.option(spec.width)
            width = f"{option.flag} (default {option.default_text()})"
        learned = "backbone's" if spec.needs_pooler_output else ("yes" if sample.has_parameters else "no")
        options = tuple(f"{o.flag}: {o.describe()}" for o in spec.options)
        out.append(PoolerDescription(spec.name, summary, spec.reads, width, learned, options))
    return out


# ---- the CLI's view ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliFlag:
    """One `poolx export` flag for every pooler option of that name: `param` is the Python parameter name,
    `type` what Typer parses (int, float, str), `help` the merged help of the poolers that take it."""

    param: str
    flag: str
    type: type
    help: str
    options: tuple[tuple[str, Option], ...] = field(repr=False)  # (pooler, its declaration)
    metavar: str | None = None  # what --help shows for the value (None: Typer's default, from the type)

    def parse(self, text: Any) -> Any:
        return self.options[0][1].parse(text)


def cli_flags() -> list[CliFlag]:
    """One flag per distinct option name across the registered poolers, in registry order. Torch-free."""
    by_name: dict[str, list[tuple[str, Option]]] = {}
    for spec in pooler_specs():
        for option in spec.options:
            by_name.setdefault(option.name, []).append((spec.name, option))
    flags = []
    for name, entries in by_name.items():
        groups: dict[str, list[str]] = {}  # identical help lines are listed once: "lstm, attention: ..."
        for pooler, option in entries:
            groups.setdefault(option.describe(), []).append(pooler)
        text = "; ".join(f"{', '.join(poolers)}: {line}" for line, poolers in groups.items())
        first = entries[0][1]
        metavar = {INT_LIST: "INT,INT,...", STR_LIST: "NAME,NAME,..."}.get(first.type)
        flags.append(CliFlag(name, first.flag, first.cli_type, text + ".", tuple(entries), metavar))
    return flags


def parse_cli_options(values: dict[str, Any]) -> dict[str, Any]:
    """The export command's pooler flags (None where not given) -> pooler options, lists parsed."""
    flags = {f.param: f for f in cli_flags()}
    return {k: flags[k].parse(v) if k in flags else v for k, v in values.items() if v is not None}
