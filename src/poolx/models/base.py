"""The pooler contract: what a pooler reads from the backbone, how wide its output is, and how it is configured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from poolx.models.registry import PoolerSpec


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

    Its options are declared once, in its registry entry (`PoolerSpec.options`, see poolx.models.options). The
    constructor takes `(width, num_layers, **options)`, validates the options against that declaration (unknown
    options and bad values raise UsageError naming the option and its valid range), sets each as an attribute of
    the same name, then calls `build()`, where a subclass creates its modules and parameters and makes any check
    that spans several options. `forward` stays free of Python control flow that depends on data; `config()`
    returns the options, so a pooler round-trips through JSON."""

    spec: ClassVar["PoolerSpec"]  # attached by the registry
    name: ClassVar[str] = ""
    reads: ClassVar[str] = "last_hidden_state"  # what it reads, for `poolx poolers`
    needs_hidden_states: ClassVar[bool] = False
    needs_pooler_output: ClassVar[bool] = False
    # Whether its vector depends on a first-token ([CLS]) position. On a causal (decoder) backbone that position
    # attends to itself only, so every text gets the same vector: PooledEncoder refuses such a pairing.
    reads_first_token: ClassVar[bool] = False

    def __init__(self, width: int, num_layers: int, **options: Any) -> None:
        super().__init__()
        from poolx.models.registry import spec_of_class

        spec = spec_of_class(type(self))
        self.width = int(width)  # the backbone's hidden size D
        self.num_layers = int(num_layers)  # L, the backbone's transformer layers (hidden_states has L+1 entries)
        for key, value in spec.validate(options, self.num_layers).items():
            setattr(self, key, value)
        self.build()

    def build(self) -> None:
        """Create modules and parameters from the (validated) option attributes. Default: nothing."""

    @property
    def output_dim(self) -> int:
        """Width of the pooled vector: what the registry entry's `width` says."""
        return self.spec.width_of(self.width, self.config())

    def config(self) -> dict[str, Any]:
        """The options (not width / num_layers, which come from the backbone), JSON-ready."""
        return {o.name: _plain(getattr(self, o.name)) for o in self.spec.options}

    @property
    def has_parameters(self) -> bool:
        return any(True for _ in self.parameters())

    def forward(self, features: BackboneFeatures) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def resolve_layer(index: int, num_layers: int) -> int:
    """Map a hidden_states index (negative counts from the top; already validated) to 0..L."""
    return index % (num_layers + 1)
