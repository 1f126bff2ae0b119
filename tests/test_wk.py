"""SBERT-WK: poolx's batched `wk` against the notebook's WKPooling kept verbatim (tests/wk_reference.py), on real
MiniLM hidden states and on synthetic layers correlated the way transformer layers are; its window quirks, the
cases where the notebook fails, precision, and the exported graph."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

from poolx.errors import UsageError
from poolx.models import BackboneFeatures, create_pooler
from poolx.models.poolers.sbert_wk import window_columns
from wk_reference import WKPooling

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there",
    "Pooling turns a sequence of token vectors into one vector per text, and SBERT-WK is one such way.",
    "机器学习模型的导出需要验证数值的一致性。",
    "a b",
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).norm(dim=-1) / b.double().norm(dim=-1)).max())


def notebook(hidden: tuple[torch.Tensor, ...], mask: torch.Tensor, layer_start: int, window: int, dtype=torch.float32):
    """The notebook's output; its alpha/var buffers follow the default dtype, so float64 runs under it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return WKPooling(layer_start, window)(torch.stack(hidden).to(dtype), mask)
    finally:
        torch.set_default_dtype(previous)


def poolx_wk(hidden, mask, layer_start, window, compute="float64"):
    pool = create_pooler("wk", width=hidden[0].shape[-1], num_layers=len(hidden) - 1, layer_start=layer_start,
                         window=window, compute=compute)
    return pool(BackboneFeatures(hidden[-1], mask, tuple(hidden)))


@pytest.fixture(scope="module")
def minilm_hidden(minilm):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return tuple(out.hidden_states), enc["attention_mask"]


def correlated_layers(batch=3, seq=12, layers=13, dim=48, step=0.35, seed=0):
    """Layers as a transformer makes them: each a drift of the previous one (consecutive cosines ~0.9) with a
    growing norm, plus a per-token base; random i.i.d. layers would make the alignment ill-conditioned."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, dim, generator=g, dtype=torch.float64)
    hidden = []
    for k in range(layers):
        x = x + step * torch.randn(batch, seq, dim, generator=g, dtype=torch.float64)
        hidden.append(x * (1.0 + 0.05 * k))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1:2, (2 * seq) // 3 :] = 0  # padded rows, when the batch has them
    mask[2:3, seq // 3 :] = 0
    return tuple(hidden), mask


@pytest.mark.parametrize("layer_start,window", [(4, 2), (0, 2), (2, 1), (1, 3), (3, 2)])
def test_real_hidden_states_match_the_notebook(minilm_hidden, layer_start, window):
    hidden, mask = minilm_hidden
    hidden64 = tuple(h.double() for h in hidden)
    ref64 = notebook(hidden64, mask, layer_start, window, torch.float64)
    assert rel(poolx_wk(hidden64, mask, layer_start, window), ref64) < 1e-10
    # float32 hidden states: at least as close to the float64 truth as the notebook's own float32 run
    ref32 = notebook(hidden, mask, layer_start, window, torch.float32)
    notebook_error = rel(ref32, ref64)
    for compute in ("float64", "float32"):
        ours = poolx_wk(hidden, mask, layer_start, window, compute)
        assert ours.dtype == torch.float32
        assert rel(ours, ref32) < 1e-4
        assert rel(ours, ref64) <= max(2 * notebook_error, 1e-6), (compute, rel(ours, ref64), notebook_error)


@pytest.mark.parametrize("layer_start,window", [(9, 2), (4, 2), (0, 3), (8, 4), (10, 2)])
def test_correlated_synthetic_layers_match_the_notebook(layer_start, window):
    hidden, mask = correlated_layers()  # 13 hidden states, as a 12-layer model has (the notebook's example: 9)
    ref64 = notebook(hidden, mask, layer_start, window, torch.float64)
    assert rel(poolx_wk(hidden, mask, layer_start, window), ref64) < 1e-10
    hidden32 = tuple(h.float() for h in hidden)
    ref32 = notebook(hidden32, mask, layer_start, window, torch.float32)
    assert rel(poolx_wk(hidden32, mask, layer_start, window), ref32) < 1e-4


def test_window_quirks_match_the_notebook_slicing():
    sizes = lambda k_layers, w: [len(window_columns(k_layers, w, k)) + 1 for k in range(k_layers)]  # noqa: E731
    assert sizes(9, 2) == [3, 3, 5, 5, 5, 5, 5, 4, 3]  # for k < w the left side is empty, not shorter
    assert sizes(4, 2) == [3, 3, 4, 3]
    assert window_columns(9, 2, 1) == [2, 3]
    assert window_columns(9, 2, 4) == [2, 3, 5, 6]
    assert window_columns(9, 2, 8) == [6, 7]


def test_tokens_used_are_cls_to_the_second_to_last_real_token():
    """Changing the last real token's hidden states ([SEP]) changes nothing; changing [CLS]'s does."""
    hidden, mask = correlated_layers(batch=1, seq=6)
    base = poolx_wk(hidden, mask, 9, 2)
    bumped = tuple(h.clone() for h in hidden)
    for h in bumped:
        h[0, 5] += 3.0  # the last real token
    assert torch.equal(poolx_wk(bumped, mask, 9, 2), base)
    for h in bumped:
        h[0, 0] += 3.0  # [CLS]
    assert not torch.allclose(poolx_wk(bumped, mask, 9, 2), base)


@pytest.mark.parametrize(
    "layer_start,window,message",
    [
        (5, 2, "leaves 2 layer"),  # K = 2: a one-element variance (the notebook's NaN)
        (4, 3, "leaves 3 layer"),  # K = w: a one-column window (the notebook's NaN)
        (7, 2, "out of range"),
        (-1, 2, "out of range"),
        (0, 0, "window must be a positive integer"),
        (0, -2, "window must be a positive integer"),
    ],
)
def test_too_few_layers_or_bad_options_are_refused(layer_start, window, message):
    with pytest.raises(UsageError, match=message):
        create_pooler("wk", width=8, num_layers=6, layer_start=layer_start, window=window)


def test_the_notebook_gives_nan_where_poolx_refuses():
    hidden, mask = correlated_layers(layers=7)
    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert torch.isnan(notebook(hidden, mask, 5, 2, torch.float64)).any()  # K = 2


def test_one_two_tokens_and_pure_padding_give_finite_vectors():
    hidden, _ = correlated_layers(batch=4, seq=5)
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    out = poolx_wk(hidden, mask, 9, 2)
    assert torch.isfinite(out).all()
    # one real token: that token's unified vector; two real tokens: only [CLS] is kept, as in the notebook
    alone = poolx_wk(tuple(h[:1, :1] for h in hidden), mask[:1, :1], 9, 2)
    torch.testing.assert_close(out[0], alone[0], rtol=1e-12, atol=1e-12)
    ref = notebook(tuple(h[1:2, :2] for h in hidden), mask[1:2, :2], 9, 2, torch.float64)
    torch.testing.assert_close(out[1], ref[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError):  # the notebook crashes on one real token (an empty stack)
        notebook(tuple(h[:1] for h in hidden), mask[:1], 9, 2, torch.float64)


def test_near_identical_layers_do_not_blow_up():
    """Layers that drift by 1e-4 of their norm. Measured (relative error against the notebook in float64):
    poolx float64 Gram on float64 states 9.7e-8, on float32 states 3.8e-4; poolx float32 Gram 0.84 and the
    notebook's own float32 QR 0.84. So the float64 Gram is the default; float32 stays finite."""
    hidden, mask = correlated_layers(step=1e-4)
    ref64 = notebook(hidden, mask, 4, 2, torch.float64)
    assert rel(poolx_wk(hidden, mask, 4, 2), ref64) < 1e-6
    hidden32 = tuple(h.float() for h in hidden)
    assert rel(poolx_wk(hidden32, mask, 4, 2), ref64) < 2e-3
    assert rel(notebook(hidden32, mask, 4, 2, torch.float32), ref64) > 0.1  # what float32 QR gives here
    assert torch.isfinite(poolx_wk(hidden32, mask, 4, 2, "float32")).all()
    identical = tuple(hidden[0].clone() for _ in hidden)  # exactly equal layers: zero distances, zero variance
    assert torch.isfinite(poolx_wk(identical, mask, 4, 2)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_hidden_states(minilm_hidden, dtype):
    hidden, mask = minilm_hidden
    half = tuple(h.to(dtype) for h in hidden)
    out = poolx_wk(half, mask, 4, 2)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = poolx_wk(tuple(h.float() for h in half), mask, 4, 2)
    assert rel(out.float(), ref) < 1e-2  # only the final cast back to half differs
    assert rel(poolx_wk(half, mask, 4, 2, "float32").float(), ref) < 1e-2


def test_exported_graph_has_no_loops_and_verifies(tiny_models, tmp_path):
    """The graph's structure on a tiny BERT (MiniLM's real hidden states are held to the notebook above, in eager;
    every tiny architecture's wk export is verified in test_export_parity)."""
    from poolx.exporter.export import export
    from poolx.parity.verify import verify

    export(str(tiny_models["bert"]), tmp_path / "wk", pooling="wk", layer_start=1, window=2)
    graph = onnx.load(str(tmp_path / "wk" / "model.onnx"))
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    assert not {"Loop", "If", "Scan"} & set(ops), ops
    report = verify(tmp_path / "wk")
    assert report.passed and report.outputs[0].max_abs < 1e-4


def test_cli_refuses_bad_window_before_writing(tmp_path):
    from typer.testing import CliRunner

    from poolx.cli import app

    for args, needle in ((["--window", "-1"], "window must be a positive integer"), (["--layer-start", "5"], "leaves 2 layer")):
        result = CliRunner().invoke(app, ["export", "-p", "wk", "-o", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_python_loops_over_data():
    """The forward's only Python loops run over window slots (≤ 2·window), fixed at construction: the same
    module gives the right answer for batch and sequence sizes it never saw, in one call."""
    hidden, mask = correlated_layers(batch=5, seq=17)
    out = poolx_wk(hidden, mask, 9, 2)
    rows = [poolx_wk(tuple(h[i : i + 1, : int(mask[i].sum())] for h in hidden), mask[i : i + 1, : int(mask[i].sum())], 9, 2)
            for i in range(5)]
    np.testing.assert_allclose(out.numpy(), torch.cat(rows).numpy(), rtol=1e-12, atol=1e-12)
