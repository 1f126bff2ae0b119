"""lstm: an LSTM over the layers' first-token vectors."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.masking import first_token
from poolx.models.poolers._checks import positive_int, probability
from poolx.models.registry import register_pooler


def stack_layer_cls(features: BackboneFeatures) -> torch.Tensor:
    """The first-token vectors of layers 1..L on a layer axis: (B, L, D)."""
    assert features.hidden_states is not None
    return torch.stack([first_token(h) for h in features.hidden_states[1:]], dim=1)


@register_pooler("lstm")
class LSTMPooler(Pooler):
    """LSTM(D→hidden_size) over the sequence of first-token vectors of layers 1..L; the last step, then dropout.

    Fixes: the notebook builds its input with `torch.stack([HS[i][:, 0].squeeze() ...], dim=-1).view(-1, L, D)`:
    stacking on the last axis and then viewing as (B, L, D) interleaves layers and features, so each "layer step"
    the LSTM sees is a mix of features of all layers. (Its `.squeeze()` drops the batch axis of the intermediate
    tensor at batch size 1; the `.view` restores it, so that costs nothing but clarity.) poolx stacks on a layer
    axis, (B, L, D), without squeezing. The ONNX graph holds one LSTM node."""

    reads = "hidden_states"
    needs_hidden_states = True
    options = {
        "hidden_size": "LSTM hidden size = output width (default 256)",
        "dropout": "dropout on the output, active only in training (default 0.1)",
    }

    def __init__(self, width: int, num_layers: int, hidden_size: int = 256, dropout: float = 0.1) -> None:
        super().__init__(width, num_layers)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.dropout_p = probability("dropout", dropout)
        self.lstm = nn.LSTM(width, self.hidden_size, batch_first=True)
        self.dropout = nn.Dropout(self.dropout_p)

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "dropout": self.dropout_p}

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        out, _ = self.lstm(stack_layer_cls(features))
        return self.dropout(out[:, -1, :])
