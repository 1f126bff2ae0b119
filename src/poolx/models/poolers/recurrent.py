"""lstm: an LSTM over the layers' first-token vectors."""

from __future__ import annotations

import torch
from torch import nn

from poolx.models.base import BackboneFeatures
from poolx.models.poolers._sequence import LayerSequencePooler, stack_layer_cls


class LSTMPooler(LayerSequencePooler):
    """LSTM(D→hidden_size) over the sequence of first-token vectors of layers 1..L; the last step, then dropout.

    Fix: the notebook builds its input with `torch.stack([HS[i][:, 0].squeeze() ...], dim=-1).view(-1, L, D)`:
    stacking on the last axis and then viewing as (B, L, D) interleaves layers and features, so each "layer step"
    the LSTM sees is a mix of features of all layers. (Its `.squeeze()` drops the batch axis of the intermediate
    tensor at batch size 1; the `.view` restores it, so that costs nothing but clarity.) poolx stacks on a layer
    axis, (B, L, D), without squeezing. The ONNX graph holds one LSTM node."""

    def build(self) -> None:
        super().build()
        self.lstm = nn.LSTM(self.width, self.hidden_size, batch_first=True)

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        out, _ = self.lstm(stack_layer_cls(features))
        return self.drop(out[:, -1, :])
