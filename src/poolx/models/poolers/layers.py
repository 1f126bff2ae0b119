"""Poolers over several layers' hidden states: layer-cls, concat, weighted."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from poolx.errors import UsageError
from poolx.models.base import BackboneFeatures, Pooler, resolve_layer
from poolx.models.masking import first_token, masked_mean
from poolx.models.registry import register_pooler


@register_pooler("layer-cls")
class LayerClsPooler(Pooler):
    """`HS[layer][:, 0]`: the first token of one layer (negative counts from the top; default -2, the second to
    last). Note: the notebook's comment says "second to last" but its code reads `all_hidden_states[11 + 1]` of a
    13-entry stack, which is the last layer; poolx follows the stated intent, and `layer=-1` gives what the code
    computes."""

    reads = "hidden_states"
    needs_hidden_states = True
    options = {"layer": "hidden_states index, embeddings = 0, negative counts from the top (default -2)"}

    def __init__(self, width: int, num_layers: int, layer: int = -2) -> None:
        super().__init__(width, num_layers)
        self.layer = layer
        self._index = resolve_layer(layer, num_layers)

    def config(self) -> dict[str, Any]:
        return {"layer": self.layer}

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.hidden_states is not None
        return first_token(features.hidden_states[self._index])


@register_pooler("concat")
class ConcatPooler(Pooler):
    """concat of `HS[i][:, 0]` for i in `layers` (default -1, -2, -3, -4): width len(layers)·D."""

    reads = "hidden_states"
    needs_hidden_states = True
    options = {"layers": "hidden_states indices to concatenate, in order, comma-separated (default -1,-2,-3,-4)"}

    def __init__(self, width: int, num_layers: int, layers: Sequence[int] = (-1, -2, -3, -4)) -> None:
        super().__init__(width, num_layers)
        if isinstance(layers, (int, str)) or len(layers) == 0:
            raise UsageError(f"layers must be a non-empty list of hidden_states indices, got {layers!r}")
        self.layers = [int(i) for i in layers]
        self._indices = [resolve_layer(i, num_layers, "layers entry") for i in self.layers]

    @property
    def output_dim(self) -> int:
        return len(self.layers) * self.width

    def config(self) -> dict[str, Any]:
        return {"layers": list(self.layers)}

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.hidden_states is not None
        return torch.cat([first_token(features.hidden_states[i]) for i in self._indices], dim=-1)


@register_pooler("weighted")
class WeightedLayerPooler(Pooler):
    """Σ w_l·HS[l] / Σ w_l over layers l ≥ layer_start (learned w, initialised to 1), then the first token
    (`token="cls"`, the notebook's choice) or the masked mean over real tokens (`token="mean"`).
    Default layer_start 4 (the notebook's class default; its example uses 9 on a 12-layer model)."""

    reads = "hidden_states"
    needs_hidden_states = True
    options = {
        "layer_start": "first hidden_states index averaged, 0..L (default 4)",
        "token": "'cls' (first token, default) or 'mean' (masked mean) of the weighted average",
    }

    def __init__(self, width: int, num_layers: int, layer_start: int = 4, token: str = "cls") -> None:
        super().__init__(width, num_layers)
        if isinstance(layer_start, bool) or not isinstance(layer_start, int) or not 0 <= layer_start <= num_layers:
            raise UsageError(
                f"layer_start {layer_start!r} is out of range: this backbone has hidden states 0..{num_layers} "
                f"(embeddings + {num_layers} layers); pick 0..{num_layers}"
            )
        if token not in ("cls", "mean"):
            raise UsageError(f"token must be 'cls' or 'mean', got {token!r}")
        self.layer_start = layer_start
        self.token = token
        self.layer_weights = nn.Parameter(torch.ones(num_layers + 1 - layer_start))

    def config(self) -> dict[str, Any]:
        return {"layer_start": self.layer_start, "token": self.token}

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
