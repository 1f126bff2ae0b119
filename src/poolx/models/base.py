"""The pooler contract: what a pooler reads from the backbone, how wide its output is, and how it is configured."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn


class BackboneFeatures(NamedTuple):
    """What the backbone hands a pooler. `hidden_states` (L+1 tensors, embeddings first, so
    `hidden_states[-1] is last_hidden_state`) is present only for poolers with `needs_hidden_states`, and
    `pooler_output` only for poolers with `needs_pooler_output`; the wrapper asks the backbone for exactly that."""

    last_hidden_state: torch.Tensor  # (B, S, D)
    attention_mask: torch.Tensor  # (B, S), 1 for real tokens
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooler_output: torch.Tensor | None = None


class Pooler(nn.Module):
    """Turns backbone features into one vector per text.

    Subclasses are registered with `@register_pooler(name)`, take `(width, num_layers, **options)` in their
    constructor (where they validate the options and raise `UsageError`), keep `forward` free of Python control flow
    that depends on data, and return their options from `config()` so a pooler round-trips through JSON.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[str] = "last_hidden_state"  # what it reads, for `poolx poolers`
    needs_hidden_states: ClassVar[bool] = False
    needs_pooler_output: ClassVar[bool] = False
    # option name -> help text, shown by `poolx poolers` and used to reject options a pooler does not take
    options: ClassVar[dict[str, str]] = {}

    def __init__(self, width: int, num_layers: int) -> None:
        super().__init__()
        self.width = width  # the backbone's hidden size D
        self.num_layers = num_layers  # L, the backbone's transformer layers (hidden_states has L+1 entries)

    @property
    def output_dim(self) -> int:
        """Width of the pooled vector."""
        return self.width

    def config(self) -> dict[str, Any]:
        """The constructor options (not width / num_layers, which come from the backbone)."""
        return {}

    @property
    def has_parameters(self) -> bool:
        return any(True for _ in self.parameters())

    def forward(self, features: BackboneFeatures) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def resolve_layer(index: int, num_layers: int, what: str = "layer") -> int:
    """Map a hidden_states index (negative counts from the top) to 0..L, or raise a UsageError naming the range."""
    from poolx.errors import UsageError

    n = num_layers + 1
    if not -n <= index < n:
        raise UsageError(
            f"{what} {index} is out of range: this backbone has {n} hidden states "
            f"(embeddings + {num_layers} layers); use 0..{num_layers} or -{n}..-1"
        )
    return index % n
