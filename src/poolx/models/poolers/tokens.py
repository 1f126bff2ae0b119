"""Poolers over the last layer (or the backbone's own pooler head): pooler, cls, mean, max, mean-max, last, and
st (sentence-transformers' Pooling module, any combination of its modes)."""

from __future__ import annotations

import torch

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.masking import first_token, last_token, masked_max, masked_mean


class BackbonePooler(Pooler):
    """The backbone's own pooler head (BERT: Linear + tanh on the first token), i.e. `outputs.pooler_output`.

    Backbones without a pooler head (DistilBERT, DeBERTa, ...) are refused when the encoder is built, with the
    other poolers named, instead of failing inside the trace."""

    reads_first_token = True

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.pooler_output is not None  # guaranteed by PooledEncoder, which checks the backbone
        return features.pooler_output


class ClsPooler(Pooler):
    """`H[:, 0]`: the last layer's first token."""

    reads_first_token = True

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


class LastTokenPooler(Pooler):
    """The last layer's hidden state at each text's last real token: what decoder embedding models (Qwen3-Embedding,
    gte-Qwen2, e5-mistral) pool, the one position of a causal backbone that has seen the whole text. The same with
    right or left padding."""

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        return last_token(features.last_hidden_state, features.attention_mask)


class SentenceTransformersPooler(Pooler):
    """sentence-transformers' `Pooling` module, exactly: the vectors of `modes`, concatenated in the order given
    (a directory's pooling config lists them in sentence-transformers' order: cls, max, mean, mean_sqrt_len_tokens,
    weightedmean, lasttoken). `cls` is the first real token, `max` is over real tokens, `mean` sums in float32
    over clamp(count, 1e-9), `mean_sqrt_len_tokens` divides that sum by sqrt(count), `weightedmean` weighs the
    i-th real token by i (1-based), `lasttoken` is `last`."""

    modes: list[str]

    @property
    def reads_first_token(self) -> bool:  # type: ignore[override]
        return "cls" in self.modes

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        h, m = features.last_hidden_state, features.attention_mask
        out = []
        for mode in self.modes:
            if mode == "cls":
                out.append(first_token(h))
            elif mode == "max":
                out.append(masked_max(h, m))
            elif mode == "mean":
                out.append(masked_mean(h, m))
            elif mode == "mean_sqrt_len_tokens":
                mask = m.unsqueeze(-1).to(h.dtype)
                out.append((h * mask).sum(1) / torch.sqrt(mask.sum(1).clamp(min=1e-9)))
            elif mode == "weightedmean":
                mask = m.unsqueeze(-1).to(h.dtype)
                weights = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
                weights = weights - m.to(torch.int32).argmax(dim=1).to(h.dtype).view(-1, 1, 1)  # from the first real token
                weighted = mask * weights
                out.append((h * weighted).sum(1) / weighted.sum(1).clamp(min=1e-9))
            else:
                out.append(last_token(h, m))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)
