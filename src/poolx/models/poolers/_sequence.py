"""The shared shape of `lstm` and `attention`: both read the first-token vectors of layers 1..L as a sequence
on a layer axis and produce `hidden_size` features followed by dropout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.masking import first_token
from poolx.models.poolers._checks import positive_int, probability


def stack_layer_cls(features: BackboneFeatures) -> torch.Tensor:
    """The first-token vectors of layers 1..L on a layer axis: (B, L, D)."""
    assert features.hidden_states is not None
    return torch.stack([first_token(h) for h in features.hidden_states[1:]], dim=1)


class LayerSequencePooler(Pooler):
    reads = "hidden_states"
    needs_hidden_states = True
    default_hidden_size = 0  # set by subclasses

    def __init__(self, width: int, num_layers: int, hidden_size: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(width, num_layers)
        self.hidden_size = positive_int("hidden_size", self.default_hidden_size if hidden_size is None else hidden_size)
        self.dropout_p = probability("dropout", dropout)
        self.dropout = nn.Dropout(self.dropout_p)

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "dropout": self.dropout_p}
