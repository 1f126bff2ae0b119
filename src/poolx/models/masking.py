"""Pure tensor helpers for masked pooling. Masks are applied out of place; nothing here writes into its inputs."""

from __future__ import annotations

import torch


def _mask_like(attention_mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return attention_mask.unsqueeze(-1).to(x.dtype)


def masked_mean(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sum(x·m) / clamp(sum(m), 1e-9) over the sequence axis: (B, S, D) -> (B, D). An all-pad row gives zeros."""
    m = _mask_like(attention_mask, x)
    count = m.sum(1).clamp(min=1e-9) if x.dtype in (torch.float32, torch.float64) else m.float().sum(1).clamp(min=1e-9)
    return ((x * m).sum(1) / count).to(x.dtype)  # the count in float32 at least: 1e-9 underflows in fp16


def masked_max(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Max over real tokens only: (B, S, D) -> (B, D). Padded positions are filled with the dtype's lowest finite
    value (not -inf, which turns into NaN in later arithmetic), out of place."""
    pad = (attention_mask == 0).unsqueeze(-1)
    return x.masked_fill(pad, torch.finfo(x.dtype).min).amax(dim=1)


def first_token(x: torch.Tensor) -> torch.Tensor:
    """(B, S, D) -> (B, D): the first position ([CLS] / <s>; poolx tokenizes with right padding)."""
    return x[:, 0]


def last_token(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S, D) -> (B, D): each row's last real token (the largest position whose mask is 1), so the same with
    right or left padding; an all-pad row gives zeros. sentence-transformers' `lasttoken`."""
    mask = attention_mask.to(torch.int32)
    positions = torch.arange(x.shape[1], device=x.device, dtype=torch.int32).unsqueeze(0)
    last = (positions * mask).amax(dim=1).to(torch.int64)  # int32 arithmetic: onnxruntime's int64 ArgMax is slow
    picked = x.gather(1, last.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
    return picked * mask.amax(dim=1, keepdim=True).to(x.dtype)
