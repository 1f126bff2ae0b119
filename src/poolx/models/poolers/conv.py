"""conv1d: two 1-D convolutions over the last layer's tokens, then a max over positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poolx.models.base import BackboneFeatures, Pooler


def _conv_mask(mask: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Which output positions of a 'full' convolution (padding = kernel_size - 1) see at least one real input.
    (B, S) float -> (B, S + kernel_size - 1): the max over each window of kernel_size positions of the padded mask
    (what `F.max_pool1d(padded, kernel_size, stride=1)` computes, value for value), taken as the elementwise max of
    the kernel_size shifted windows. The shifts are slices with constant bounds (the last one's end counted from the
    end), so no exporter sees the length: max_pool1d made torch.export fix the sequence axis to the example's."""
    k = kernel_size
    padded = F.pad(mask, (k - 1, k - 1))  # (B, S + 2k - 2)
    out = padded[:, k - 1:]  # the window's last position, for each of the S + k - 1 windows
    for j in range(k - 1):
        out = torch.maximum(out, padded[:, j:j - (k - 1)])
    return out


class Conv1dPooler(Pooler):
    """Conv1d(D→channels, k, pad=k-1) → ReLU → Conv1d(channels→out_channels, k, pad=k-1) → max over positions.
    The notebook's defaults: channels 256, out_channels 1, kernel_size 2; the output width is out_channels.

    Fix: the notebook convolves the padded sequence as is, so padding changes the result (a padded position holds
    the pad token's hidden state, and ReLU(bias) of an all-padding window is not zero). poolx zeroes the padded
    inputs, zeroes the first convolution's outputs that see no real token, and takes the max only over output
    positions that see a real token: a text padded to any length gives exactly what the notebook gives on that
    text unpadded."""

    channels: int
    out_channels: int
    kernel_size: int

    def build(self) -> None:
        pad = self.kernel_size - 1
        self.cnn1 = nn.Conv1d(self.width, self.channels, kernel_size=self.kernel_size, padding=pad)
        self.cnn2 = nn.Conv1d(self.channels, self.out_channels, kernel_size=self.kernel_size, padding=pad)

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        h = features.last_hidden_state
        m0 = features.attention_mask.to(h.dtype)  # (B, S)
        x = (h * m0.unsqueeze(-1)).transpose(1, 2)  # (B, D, S)
        m1 = _conv_mask(m0, self.kernel_size)  # (B, S + k - 1)
        y = F.relu(self.cnn1(x)) * m1.unsqueeze(1)
        m2 = _conv_mask(m1, self.kernel_size)  # (B, S + 2k - 2)
        y = self.cnn2(y).masked_fill((m2 == 0).unsqueeze(1), torch.finfo(y.dtype).min)
        return y.amax(dim=-1)
