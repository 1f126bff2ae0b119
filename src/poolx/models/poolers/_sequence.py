"""The shared shape of `lstm` and `attention`: both read the first-token vectors of layers 1..L as a sequence
on a layer axis and produce `hidden_size` features followed by dropout."""

from __future__ import annotations

import torch
from torch import nn

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.masking import first_token


def stack_layer_cls(features: BackboneFeatures) -> torch.Tensor:
    """The first-token vectors of layers 1..L on a layer axis: (B, L, D)."""
    assert features.hidden_states is not None
    return torch.stack([first_token(h) for h in features.hidden_states[1:]], dim=1)


class LayerSequencePooler(Pooler):
    """Options hidden_size (the output width) and dropout (the probability; the module is `self.drop`, which has
    no parameters, so it adds nothing to the state_dict)."""

    hidden_size: int
    dropout: float
    reads_first_token = True

    def build(self) -> None:
        self.drop = nn.Dropout(self.dropout)
