"""attention: a learned query attends over the layers' first-token vectors, then a projection."""

from __future__ import annotations

import torch
from torch import nn

from poolx.models.base import BackboneFeatures
from poolx.models.poolers._sequence import LayerSequencePooler, stack_layer_cls


class AttentionPooler(LayerSequencePooler):
    """softmax(q·hᵀ) over the first-token vectors h of layers 1..L, their weighted sum, then a projection
    W (D→hidden_size), then dropout. q and W are initialised N(0, 0.1²) as in the notebook.

    Fixes: the notebook writes `self.q = nn.Parameter(torch.from_numpy(q_t)).float()`: `.float()` of a float64
    Parameter is a plain tensor, so q and W are neither trained (not in `parameters()`) nor saved (not in
    `state_dict()`), and they stay float64 until cast; poolx registers them as float32 Parameters. It also has the
    same stack/view scramble of layers and features as the LSTM pooler; poolx stacks on a layer axis."""

    def build(self) -> None:
        super().build()
        self.q = nn.Parameter(torch.empty(1, self.width).normal_(0.0, 0.1))
        self.w_h = nn.Parameter(torch.empty(self.width, self.hidden_size).normal_(0.0, 0.1))

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, hidden_size): the notebook's `attention(h)`. The notebook projects with
        `w_hᵀ @ column`, poolx with `row @ w_h`: the same product, equal to float32 rounding (~1e-6)."""
        v = torch.softmax(torch.matmul(self.q, h.transpose(-2, -1)).squeeze(1), dim=-1)  # (B, L)
        pooled = torch.matmul(v.unsqueeze(1), h).squeeze(1)  # (B, D)
        return torch.matmul(pooled, self.w_h)

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        return self.drop(self.attend(stack_layer_cls(features)))
