"""lstm: an LSTM over the layers' first-token vectors."""

from __future__ import annotations

import torch
from torch import nn

from poolx.models.base import BackboneFeatures
from poolx.models.poolers._sequence import LayerSequencePooler, stack_layer_cls
from poolx.models.registry import register_pooler


@register_pooler("lstm")
class LSTMPooler(LayerSequencePooler):
    """LSTM(D→hidden_size) over the sequence of first-token vectors of layers 1..L; the last step, then dropout.

    Fix: the notebook builds its input with `torch.stack([HS[i][:, 0].squeeze() ...], dim=-1).view(-1, L, D)`:
    stacking on the last axis and then viewing as (B, L, D) interleaves layers and features, so each "layer step"
    the LSTM sees is a mix of features of all layers. (Its `.squeeze()` drops the batch axis of the intermediate
    tensor at batch size 1; the `.view` restores it, so that costs nothing but clarity.) poolx stacks on a layer
    axis, (B, L, D), without squeezing. The ONNX graph holds one LSTM node."""

    options = {
        "hidden_size": "LSTM hidden size = output width (default 256)",
        "dropout": "dropout on the output, active only in training (default 0.1)",
    }
    default_hidden_size = 256

    def __init__(self, width: int, num_layers: int, hidden_size: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(width, num_layers, hidden_size, dropout)
        self.lstm = nn.LSTM(width, self.hidden_size, batch_first=True)

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        out, _ = self.lstm(stack_layer_cls(features))
        return self.dropout(out[:, -1, :])
