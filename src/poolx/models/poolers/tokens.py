"""Poolers over the last layer (or the backbone's own pooler head): pooler, cls, mean, max, mean-max."""

from __future__ import annotations

import torch

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.masking import first_token, masked_max, masked_mean


class BackbonePooler(Pooler):
    """The backbone's own pooler head (BERT: Linear + tanh on the first token), i.e. `outputs.pooler_output`.

    Backbones without a pooler head (DistilBERT, DeBERTa, ...) are refused when the encoder is built, with the
    other poolers named, instead of failing inside the trace."""

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.pooler_output is not None  # guaranteed by PooledEncoder, which checks the backbone
        return features.pooler_output


class ClsPooler(Pooler):
    """`H[:, 0]`: the last layer's first token."""

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        return first_token(features.last_hidden_state)


class MeanPooler(Pooler):
    """Masked mean of the last layer: sum(H·m) / clamp(sum(m), 1e-9)."""

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        return masked_mean(features.last_hidden_state, features.attention_mask)


class MaxPooler(Pooler):
    """Max of the last layer over real tokens.

    Fix: the notebook writes -1e9 into `last_hidden_state` in place (`H[mask == 0] = -1e9`), which corrupts the
    tensor for anything that reads it later and breaks autograd; poolx masks out of place and fills with the
    dtype's lowest value, so it also works in fp16/bf16 where -1e9 overflows."""

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        return masked_max(features.last_hidden_state, features.attention_mask)


class MeanMaxPooler(Pooler):
    """concat(masked mean, masked max) of the last layer: width 2·D.

    Fixes: the notebook takes `_, x = torch.max(H, 1)`, i.e. the **indices** of the maxima, and concatenates them
    as if they were values; and it ignores the mask in both the mean and the max, so padding changes the result.
    poolx concatenates the masked mean and the masked max values."""

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        h, m = features.last_hidden_state, features.attention_mask
        return torch.cat((masked_mean(h, m), masked_max(h, m)), dim=-1)
