"""attention: a learned query attends over the layers' first-token vectors, then a projection."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.poolers._checks import positive_int, probability
from poolx.models.poolers.recurrent import stack_layer_cls
from poolx.models.registry import register_pooler


@register_pooler("attention")
class AttentionPooler(Pooler):
    """softmax(q·hᵀ) over the first-token vectors h of layers 1..L, their weighted sum, then a projection
    W (D→hidden_size), then dropout. q and W are initialised N(0, 0.1²) as in the notebook.

    Fixes: the notebook writes `self.q = nn.Parameter(torch.from_numpy(q_t)).float()`: `.float()` of a float64
    Parameter is a plain tensor, so q and W are neither trained (not in `parameters()`) nor saved (not in
    `state_dict()`), and they stay float64 until cast; poolx registers them as float32 Parameters. It also has the
    same stack/view scramble of layers and features as the LSTM pooler; poolx stacks on a layer axis."""

    reads = "hidden_states"
    needs_hidden_states = True
    options = {
        "hidden_size": "projection size = output width (default 128)",
        "dropout": "dropout on the output, active only in training (default 0.1)",
    }

    def __init__(self, width: int, num_layers: int, hidden_size: int = 128, dropout: float = 0.1) -> None:
        super().__init__(width, num_layers)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.dropout_p = probability("dropout", dropout)
        self.q = nn.Parameter(torch.empty(1, width).normal_(0.0, 0.1))
        self.w_h = nn.Parameter(torch.empty(width, self.hidden_size).normal_(0.0, 0.1))
        self.dropout = nn.Dropout(self.dropout_p)

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "dropout": self.dropout_p}

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, hidden_size): the notebook's `attention(h)`. The notebook projects with
        `w_hᵀ @ column`, poolx with `row @ w_h`: the same product, equal to float32 rounding (~1e-6)."""
        v = torch.softmax(torch.matmul(self.q, h.transpose(-2, -1)).squeeze(1), dim=-1)  # (B, L)
        pooled = torch.matmul(v.unsqueeze(1), h).squeeze(1)  # (B, D)
        return torch.matmul(pooled, self.w_h)

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        return self.dropout(self.attend(stack_layer_cls(features)))
