"""The embedding tail: what a sentence-transformers pipeline does after pooling (Dense steps, then Normalize), or
`poolx export --normalize` on any export. Part of the graph, so every runtime (Embedder, `poolx embed`, the
server, Triton, Ray) returns the same vectors."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from poolx.models.st_pipeline import DenseStep, load_dense_state


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ x, or + residual(x) when the widths differ)."""

    def __init__(self, step: DenseStep) -> None:
        super().__init__()
        self.step = step
        self.linear = nn.Linear(step.in_features, step.out_features, bias=step.bias)
        self.activation = getattr(nn, step.activation)()
        if step.residual and step.in_features != step.out_features:
            self.residual = nn.Linear(step.in_features, step.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.step.residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class EmbeddingTail(nn.Module):
    """Dense steps in order, then L2 normalization (F.normalize, eps 1e-12: sentence-transformers' Normalize)."""

    def __init__(self, dense: Sequence[DenseStep] = (), normalize: bool = False) -> None:
        super().__init__()
        self.dense = nn.ModuleList(Dense(step) for step in dense)
        self.normalize = bool(normalize)

    @property
    def steps(self) -> tuple[DenseStep, ...]:
        return tuple(d.step for d in self.dense)

    def output_dim(self, width: int) -> int:
        return self.dense[-1].step.out_features if len(self.dense) else width

    def load_source_weights(self) -> None:
        """Each Dense step's weights from the sentence-transformers module it was read from."""
        for module in self.dense:
            if module.step.weights is not None:
                module.load_state_dict(load_dense_state(module.step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.dense:
            x = module(x)
        return F.normalize(x, p=2, dim=-1) if self.normalize else x
