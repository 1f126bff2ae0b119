"""wk: SBERT-WK (Wang & Kuo, 2020) as batched tensor ops, numerically the notebook's `WKPooling`.

The notebook loops over sentences, tokens and layers in Python and runs `torch.qr` on each token's window of
layers. Every quantity it reads from R has a closed form in the window's Gram matrix (windowᵀ = QR gives
Gram = RᵀR, so R is the Cholesky factor of the Gram up to signs, which cancel):
  ‖R[:, -1]‖            = ‖x_k‖
  |R[-1, -1]|           = d_k, the distance of x_k from the span of the other window vectors
  ‖R[:-1, -1]‖          = ‖P x_k‖ = sqrt(‖x_k‖² - d_k²)
  mean_j(unit(R[:-1, j]))·R[:-1, -1] = mean_j ⟨x_j/‖x_j‖, x_k⟩
d_k² comes from an unrolled Cholesky of the ≤ 2w × 2w Gram of the other window vectors, vectorised over
(batch, token, layer); the window layout depends only on (K, w), so it is a constant selection matrix, and
padding enters only through masks. No QR, solve or inverse, no data-dependent Python control flow.
"""

from __future__ import annotations

import torch

from poolx.errors import UsageError
from poolx.models.base import BackboneFeatures, Pooler

COMPUTE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def window_columns(num_layers: int, window: int, k: int) -> list[int]:
    """The notebook's window for layer k of a K-layer stack, self excluded, in its order: `[k-w:k]` (Python
    slicing, so for k < w the start wraps and the left side is empty when K ≥ w), then `[k+1:k+w+1]`."""
    layers = list(range(num_layers))
    return layers[k - window : k] + layers[k + 1 : k + window + 1]


def check_layers(num_layers: int, layer_start: int, window: int) -> int:
    """The layers (layer_start, window) leave SBERT-WK on a backbone of num_layers layers, K, or a UsageError when
    too few are left (each option's own type and range are checked by its declaration)."""
    k = num_layers + 1 - layer_start
    need = max(3, window + 1)
    if k < need:
        raise UsageError(
            f"layer_start {layer_start} with window {window} leaves {k} layer(s) ({layer_start}..{num_layers}); "
            f"SBERT-WK needs at least {need} (more than the window, for a window of two or more columns, and 3 "
            f"for the variance over consecutive layers): use layer_start <= {num_layers + 1 - need} or a smaller window"
        )
    return k


class SBertWKPooler(Pooler):
    """SBERT-WK over hidden states layer_start..L (default 4; the notebook's example uses 9) with a context
    window of `window` layers on each side (default 2). No learned parameters; width D.

    Per token, a unified vector Σ_k α_k·x_k over the layers, α from alignment and novelty of x_k against its
    window; then the sentence vector Σ_t β_t·u_t with β_t ∝ the variance of the cosines between consecutive
    layers of token t. Tokens 0 … n-2 are used (the last real token, [SEP], is dropped; [CLS] is kept), as in the
    notebook.

    Where the notebook fails, poolx defines: (layer_start, window) leaving fewer than max(3, window+1) layers is
    refused at construction (the notebook gives NaN: a one-column window, or a one-element variance); a text
    with one real token uses that token (the notebook crashes on an empty stack); a row of pure padding gives a
    finite vector; when every kept token has zero variance (identical layers) the tokens are weighted equally;
    Cholesky pivots are floored at 1e-12 (float64) / 1e-6 (float32) of the pivot's scale, so near-identical
    layers give finite weights. Fix: the notebook reads the mask from a global `features` and moves everything
    to the CPU; poolx takes the mask with the hidden states and stays on their device.

    `compute` is the dtype of the Gram part (default float64: float32 Gram matrices lose the small distances of
    near-identical layers; the Gram costs O(K²·D) per token, negligible beside the backbone). fp16/bf16 hidden
    states are computed in at least float32 and the result cast back."""

    layer_start: int
    window: int
    compute: str

    def build(self) -> None:
        window = self.window
        self.num_used = check_layers(self.num_layers, self.layer_start, window)
        k_layers, slots = self.num_used, 2 * window
        select = torch.zeros(k_layers, slots, k_layers)  # select[k, i] picks the i-th window column of layer k
        valid = torch.zeros(k_layers, slots)
        for k in range(k_layers):
            for i, j in enumerate(window_columns(k_layers, window, k)):
                select[k, i, j] = 1.0
                valid[k, i] = 1.0
        self.register_buffer("select", select, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("columns", valid.sum(1) + 1.0, persistent=False)  # m_k, rows of the notebook's window
        self.register_buffer("own", torch.eye(k_layers).unsqueeze(-1), persistent=False)  # (K, K, 1) picks column k

    def forward(self, features: BackboneFeatures) -> torch.Tensor:
        assert features.hidden_states is not None
        x = torch.stack(features.hidden_states[self.layer_start :], dim=2)  # (B, S, K, D)
        dtype = COMPUTE_DTYPES[self.compute]
        xc = x.to(dtype)
        gram = torch.matmul(xc, xc.transpose(-1, -2))  # (B, S, K, K)
        eye = self.own.squeeze(-1).to(gram.dtype)
        sq = (gram * eye).sum(-1)  # (B, S, K) ‖x_k‖², the Gram's diagonal
        consecutive = (gram[..., 1:, :-1] * eye[1:, 1:]).sum(-1)  # (B, S, K-1) ⟨x_{k+1}, x_k⟩
        alpha = self._layer_weights(gram, sq)  # (B, S, K)
        beta = self._token_weights(consecutive, sq, features.attention_mask)  # (B, S)
        # the weighted sums in the hidden states' own dtype (at least float32), as the notebook's torch.mv
        out_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = x.to(out_dtype)
        tokens = torch.matmul(alpha.to(out_dtype).unsqueeze(-2), x).squeeze(-2)  # (B, S, D), unified token vectors
        return torch.matmul(beta.to(out_dtype).unsqueeze(-2), tokens).squeeze(-2).to(features.hidden_states[-1].dtype)

    def _layer_weights(self, gram: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        """α (B, S, K): the notebook's unify_token weights from the Gram matrix of each token's layers."""
        tiny = 1e-12 if gram.dtype == torch.float64 else 1e-6
        select = self.select.to(gram.dtype)
        valid = self.valid.to(gram.dtype)
        rows = torch.matmul(select, gram.unsqueeze(2))  # (B, S, K, M, K): Gram rows of the window columns
        g = torch.matmul(rows, self.own.to(gram.dtype)).squeeze(-1)  # (B, S, K, M): ⟨x_j, x_k⟩ per window slot
        sub = torch.matmul(rows, select.transpose(-1, -2))  # (B, S, K, M, M) Gram of the window columns
        slots = valid.shape[-1]
        # Unrolled Cholesky of `sub` (invalid slots act as identity rows) and forward substitution of g:
        # d² = ‖x_k‖² - ‖L⁻¹g‖² is the squared distance of x_k from the span of its window.
        lower: list[list[torch.Tensor]] = []
        y: list[torch.Tensor] = []
        for i in range(slots):
            v_i = valid[:, i]
            row: list[torch.Tensor] = []
            for p in range(i):
                acc = sub[..., i, p]
                for q in range(p):
                    acc = acc - row[q] * lower[p][q]
                row.append(acc / lower[p][p])
            pivot = sub[..., i, i] - sum((r * r for r in row), torch.zeros_like(sq))
            scale = sub[..., i, i].clamp(min=tiny)
            pivot = torch.where(v_i > 0, torch.maximum(pivot, scale * tiny), 1.0)
            diag = torch.sqrt(pivot)
            row.append(diag)
            lower.append(row)
            acc = g[..., i] - sum((row[p] * y[p] for p in range(i)), torch.zeros_like(sq))
            y.append(acc / diag)
        projected = sum((t * t for t in y), torch.zeros_like(sq))  # ‖P x_k‖²
        dist = torch.sqrt((sq - projected).clamp(min=0.0))
        norm = torch.sqrt(sq.clamp(min=tiny))
        sub_sq = torch.stack([sub[..., i, i] for i in range(slots)], dim=-1)  # ‖x_j‖² per slot
        unit_dots = g / torch.sqrt(sub_sq.clamp(min=tiny))  # ⟨x_j/‖x_j‖, x_k⟩
        mean_dot = (unit_dots * valid).sum(-1) / valid.sum(-1)
        proj_norm = torch.sqrt(projected.clamp(min=tiny * tiny))
        mean_dot = torch.where(mean_dot.abs() < tiny, tiny, mean_dot)
        alignment = proj_norm / (2.0 * self.columns.to(gram.dtype) * mean_dot)
        novelty = dist / norm
        alignment = alignment / alignment.sum(-1, keepdim=True)
        novelty = novelty / novelty.sum(-1, keepdim=True).clamp(min=tiny)
        alpha = alignment + novelty
        return alpha / alpha.sum(-1, keepdim=True)

    def _token_weights(self, consecutive: torch.Tensor, sq: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """β (B, S): the notebook's unify_sentence weights, over tokens 0 … n-2 (at least the first token)."""
        # cos(x_{k+1}, x_k): the notebook's sim_map.diagonal(-1), with its eps on the product of norms
        cos = consecutive / torch.sqrt(sq[..., 1:] * sq[..., :-1]).clamp(min=1e-8)  # (B, S, K-1)
        centred = cos - cos.mean(-1, keepdim=True)
        var = (centred * centred).sum(-1) / (cos.shape[-1] - 1)  # unbiased, as torch.var
        n = attention_mask.sum(-1, keepdim=True)  # (B, 1)
        positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device).unsqueeze(0)
        keep = positions < (n - 1).clamp(min=1)
        var = torch.where(keep, var, 0.0)
        total = var.sum(-1, keepdim=True)
        count = keep.to(var.dtype).sum(-1, keepdim=True)
        uniform = keep.to(var.dtype) / count
        return torch.where(total > 0, var / torch.where(total > 0, total, 1.0), uniform)
