"""Poolers over several layers' hidden states: layer-cls, concat, weighted."""

from __future__ import annotations

import torch
from torch import nn

from poolx.models.base import BackboneFeatures, Pooler, resolve_layer
from poolx.models.masking import first_token, masked_mean


class LayerClsPooler(Pooler):
    """`HS[layer][:, 0]`: the first token of one layer (negative counts from the top; default -2, the second to
    last). Note: the notebook's comment says "second to last" but its code reads `all_hidden_states[11 + 1]` of a
    13-entry stack, which is the last layer; poolx follows the stated intent, and `layer=-1` gives what the code
    computes."""

    reads_first_token = True
    layer: int

    def build(self) -> None:
        self._index = resolve_layer(self.layer, self.num_layers)

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.hidden_states is not None
        return first_token(features.hidden_states[self._index])


class ConcatPooler(Pooler):
    """concat of `HS[i][:, 0]` for i in `layers` (default -1, -2, -3, -4): width len(layers)·D."""

    reads_first_token = True
    layers: list[int]

    def build(self) -> None:
        self._indices = [resolve_layer(i, self.num_layers) for i in self.layers]

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.hidden_states is not None
        return torch.cat([first_token(features.hidden_states[i]) for i in self._indices], dim=-1)


class WeightedLayerPooler(Pooler):
    """Σ w_l·HS[l] / Σ w_l over layers l ≥ layer_start (learned w, initialised to 1), then the first token
    (`token="cls"`, the notebook's choice) or the masked mean over real tokens (`token="mean"`).
    Default layer_start 4 (the notebook's class default; its example uses 9 on a 12-layer model)."""

    layer_start: int
    token: str

    @property
    def reads_first_token(self) -> bool:  # type: ignore[override]
        return self.token == "cls"

    def build(self) -> None:
        self.layer_weights = nn.Parameter(torch.ones(self.num_layers + 1 - self.layer_start))

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.hidden_states is not None
        layers = features.hidden_states[self.layer_start :]
        w = self.layer_weights
        if self.token == "cls":  # first token of the weighted average = weighted average of first tokens
            stacked = torch.stack([first_token(h) for h in layers])  # (K, B, D)
            return (w[:, None, None] * stacked).sum(0) / w.sum()
        stacked = torch.stack(layers)  # (K, B, S, D)
        average = (w[:, None, None, None] * stacked).sum(0) / w.sum()
        return masked_mean(average, features.attention_mask)
