"""One registry of poolers, filled by `@register_pooler`, read by the factory, the CLI and the tests."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from poolx.errors import UnknownPoolerError, UsageError
from poolx.models.base import Pooler

P = TypeVar("P", bound=type[Pooler])

POOLERS: dict[str, type[Pooler]] = {}


def register_pooler(name: str) -> Callable[[P], P]:
    """Class decorator: `@register_pooler("mean")`. A name registered twice is an error."""

    def add(cls: P) -> P:
        if name in POOLERS:
            raise ValueError(f"pooler {name!r} is already registered by {POOLERS[name].__qualname__}")
        cls.name = name
        POOLERS[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    # Importing the modules runs their decorators; kept here so `import poolx.models.registry` is enough.
    from poolx.models import poolers  # noqa: F401


def list_poolers() -> list[str]:
    _load_builtin()
    return list(POOLERS)


def get_pooler_class(name_or_cls: str | type[Pooler]) -> type[Pooler]:
    _load_builtin()
    if isinstance(name_or_cls, type) and issubclass(name_or_cls, Pooler):
        return name_or_cls
    try:
        return POOLERS[name_or_cls]
    except KeyError:
        raise UnknownPoolerError(
            f"unknown pooler {name_or_cls!r}; choose one of: {', '.join(POOLERS)} (see `poolx poolers`)"
        ) from None


def create_pooler(name_or_cls: str | type[Pooler], *, width: int, num_layers: int, **options: Any) -> Pooler:
    """Build a pooler for a backbone of hidden size `width` with `num_layers` transformer layers.

    Options the pooler does not take, and options left as None, are handled here so every pooler rejects
    unknown options the same way."""
    cls = get_pooler_class(name_or_cls)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        takes = ", ".join("--" + k.replace("_", "-") for k in cls.options) or "no options"
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise UsageError(f"pooler {cls.name!r} does not take {flags}; it takes: {takes} (see `poolx poolers`)")
    return cls(width=width, num_layers=num_layers, **options)
