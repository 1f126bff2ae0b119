"""The masked helpers on hand-built tensors: padded positions hold 99 so any leak shows."""

from __future__ import annotations

import torch

from poolx.models.masking import masked_max, masked_mean
from poolx.models.poolers.conv import _conv_mask

H = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [99.0, 99.0]], [[-5.0, 6.0], [99.0, 99.0], [99.0, 99.0]]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_mean_ignores_padding():
    assert torch.equal(masked_mean(H, M), torch.tensor([[2.0, 1.0], [-5.0, 6.0]]))


def test_masked_max_ignores_padding_and_does_not_write_its_input():
    before = H.clone()
    assert torch.equal(masked_max(H, M), torch.tensor([[3.0, 4.0], [-5.0, 6.0]]))
    assert torch.equal(H, before)


def test_all_pad_row_is_finite():
    zero = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(masked_mean(H[:1], zero), torch.zeros(1, 2))
    assert torch.isfinite(masked_max(H[:1], zero)).all()
    half = masked_max(H[:1].half(), zero)
    assert torch.isfinite(half).all() and half.dtype == torch.float16


def test_conv_mask_marks_output_positions_that_see_a_real_token():
    m = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert _conv_mask(m, 2).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]  # 'full' conv output has S+1 positions
    assert _conv_mask(m, 3).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
