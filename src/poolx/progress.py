"""Progress of the steps a user waits for (export, int8 calibration, verify), as INFO records on the "poolx"
logger: the library says what it is doing with `step`, and whoever listens shows it. The CLI shows the latest step
as a rich status line while stderr is a terminal (`poolx.cli`), and nothing when it is not or with --json. Without a
listener the records go nowhere (the logger's level stays WARNING), so library users see nothing they did not ask
for; `logging.getLogger("poolx").setLevel(logging.INFO)` with a handler shows them."""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("poolx")
T = TypeVar("T")


def step(message: str) -> None:
    """Say what poolx is doing now ("tracing the model", "int8: alpha 0.6, 2 of 5")."""
    log.info(message)


def counted(items: Iterable[T], what: str, total: int) -> Iterator[T]:
    """`items`, saying "`what` k of `total`" before each."""
    for k, item in enumerate(items, 1):
        step(f"{what} {k} of {total}")
        yield item
