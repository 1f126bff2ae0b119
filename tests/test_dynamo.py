"""torch's dynamo exporter (issue 15): one export of a tiny BERT per suite run, so a torch or onnxscript release
that breaks the path shows up at once; the fixed-axis refusal; the conv1d pooler's mask; the exporter choice."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poolx.errors import ExportError, UsageError
from poolx.exporter.export import export
from poolx.manifest import Manifest
from poolx.models.backbones import BERT, MODERNBERT, adapter_for
from poolx.parity.verify import verify

L = 4  # layers of conftest's tiny models
pytestmark = pytest.mark.xdist_group("test_dynamo")  # one worker: torch.export's first-call start-up paid once


@pytest.fixture(scope="module")
def dynamo_bert(tiny_models, tmp_path_factory):
    """The tiny BERT with the conv1d pooler and a head, exported by the dynamo exporter and fused: the suite's one
    dynamo export (read only)."""
    out = tmp_path_factory.mktemp("dynamo") / "e"
    export(str(tiny_models["bert"]), out, pooling="conv1d", num_labels=2, optimize=True, exporter="dynamo",
           max_length=64)
    return out


def test_dynamo_export_stays_dynamic_fuses_attention_and_verifies(dynamo_bert):
    manifest = Manifest.read(dynamo_bert)
    assert manifest.graph["exporter"] == "dynamo" and manifest.graph["opset"] == 18
    assert manifest.graph["fusions"] == BERT.expected_fusions(L, exporter="dynamo")
    assert manifest.graph["fusions"]["Attention"] == L  # onnxscript's fusions, not onnxruntime's optimizer
    model = onnx.load(str(dynamo_bert / "model.onnx"))
    for value in model.graph.input:
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]
    names = [n.name for n in model.graph.node]
    assert any(n.startswith("/pooler/") for n in names) and any(n.startswith("/head/") for n in names)
    assert not any(n.startswith("node_") for n in names)  # every node named by its torch scope
    report = verify(dynamo_bert)  # batches of several lengths: conv1d took the sequence axis as dynamic
    assert report.passed and len({s[1] for s in report.shapes}) > 2
    assert all(o.max_abs < 1e-4 for o in report.outputs)


def test_dynamo_graph_runs_in_the_embedder(dynamo_bert):
    from poolx.runtime.embedder import Embedder

    vectors = Embedder(dynamo_bert, "cpu", threads=1).embed(["a short text", "a longer text " * 20, ""])
    assert vectors.shape == (3, 1) and np.isfinite(vectors).all()


def test_fp16_of_a_dynamo_graph_keeps_pooler_and_head_float32(dynamo_bert, tmp_path):
    """The fp16 step selects the pooler and head by the scope names given from name_scopes metadata (the dynamo
    exporter's own names are node_*), and the converted graph stays within fp16's cosine bound."""
    import onnxruntime as ort
    from onnxruntime.transformers.onnx_model import OnnxModel

    from poolx.exporter.fuse import to_fp16
    from poolx.runtime.tokenizer import TextEncoder

    fp32 = onnx.load(str(dynamo_bert / "model.onnx"))
    optimized = OnnxModel(onnx.load(str(dynamo_bert / "model.onnx")))
    kept = to_fp16(optimized, "dynamo")
    model = optimized.model
    after = [n for n in model.graph.node if n.name.startswith(("/pooler/", "/head/"))]
    assert kept > 0 and len(after) > 0
    pooler_weights = {i for n in after for i in n.input}
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    assert any(v == onnx.TensorProto.FLOAT16 for v in initializers.values())  # the backbone is fp16
    assert all(initializers[w] != onnx.TensorProto.FLOAT16 for w in pooler_weights if w in initializers)
    assert sum(initializers.get(w) == onnx.TensorProto.FLOAT for w in pooler_weights) >= 4  # conv1d's and the head's
    onnx.save(model, str(tmp_path / "fp16.onnx"))
    onnx.checker.check_model(str(tmp_path / "fp16.onnx"))
    manifest = Manifest.read(dynamo_bert)
    feeds = TextEncoder(dynamo_bert, manifest)(["fp16 keeps the pooler in float32", "a second text"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = lambda m: ort.InferenceSession(m.SerializeToString(), options).run(None, feeds)  # noqa: E731
    ref, got = run(fp32), run(model)
    for a, b in zip(ref, got):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, atol=5e-2, rtol=5e-2)


class _FixesLength(nn.Module):
    """Pools with F.max_pool1d over the padded mask, as conv1d did: torch.export fixes the sequence axis here."""

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return F.max_pool1d(F.pad(mask, (1, 1)).unsqueeze(1), 2, stride=1).squeeze(1)


class _Toy(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)
        self.pooler = pool

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return ((h.sum(-1) + self.pooler(attention_mask.float())[:, 1:]).sum(-1, keepdim=True),)


def test_a_module_that_fixes_the_sequence_axis_is_refused_by_name():
    from poolx.exporter.dynamo import export_dynamo
    from poolx.spec import IOSpec

    spec = IOSpec.build(width=4, num_layers=1, num_heads=1, output_dim=1, num_labels=None, token_type_ids=False)
    args = (torch.ones(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64))
    with pytest.raises(ExportError) as e:
        export_dynamo(_Toy(_FixesLength()).eval(), args, spec, 18, "the toy")
    message = str(e.value)
    assert "\n" not in message and "sequence_length" in message and "to 16" in message
    assert "pooler (_FixesLength)" in message


def test_a_fixed_axis_in_the_onnx_graph_is_refused():
    from onnx import TensorProto, helper

    from poolx.exporter.dynamo import check_symbolic
    from poolx.spec import IOSpec

    spec = IOSpec.build(width=4, num_layers=1, num_heads=1, output_dim=4, num_labels=None, token_type_ids=False)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["s0", 16]) for n in spec.input_names]
    outputs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["s0", 4])]
    model = helper.make_model(helper.make_graph([], "g", inputs, outputs))
    with pytest.raises(ExportError, match=r"axis 1 \(sequence_length\) of input_ids to 16 in pooler \(X\)"):
        check_symbolic(model, spec, "pooler (X)")
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[1].dim_param = "s1"
    check_symbolic(model, spec)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
def test_conv1d_mask_is_max_pool1d_value_for_value(kernel_size):
    from poolx.models.poolers.conv import _conv_mask

    g = torch.Generator().manual_seed(kernel_size)
    for length in (1, 2, 9):
        for x in ((torch.rand(3, length, generator=g) > 0.4).float(), torch.rand(3, length, generator=g)):
            padded = F.pad(x, (kernel_size - 1, kernel_size - 1)).unsqueeze(1)
            assert torch.equal(_conv_mask(x, kernel_size), F.max_pool1d(padded, kernel_size, stride=1).squeeze(1))


def test_exporter_and_opset_are_checked_before_loading(tmp_path):
    with pytest.raises(UsageError, match="unknown exporter 'jit'"):
        export(str(tmp_path / "missing"), tmp_path / "e", exporter="jit")
    with pytest.raises(UsageError, match="opset 17 is not written by the dynamo exporter"):
        export(str(tmp_path / "missing"), tmp_path / "e", exporter="dynamo", opset=17)
    assert not (tmp_path / "e").exists()


def test_the_default_exporter_is_the_adapters_and_recorded(bert_mean):
    assert Manifest.read(bert_mean).graph["exporter"] == BERT.exporter == "torchscript"
    assert adapter_for("qwen3").exporter_for(17) == "torchscript"  # opset 17 is the TorchScript exporter's
    assert MODERNBERT.exporter_for(None) == MODERNBERT.exporter


@pytest.mark.skipif(not os.environ.get("POOLX_DYNAMO_ALL"),
                    reason="a second dynamo export (~6 s): set POOLX_DYNAMO_ALL=1")
def test_int8_of_a_dynamo_graph_keeps_the_pooler_float32_and_verifies(tiny_models, tmp_path):
    """int8 quantizes the dynamo graph's backbone MatMuls and leaves the pooler's (selected by the scope names),
    then onnxscript's fusions fuse the attention between the quantized projections; verify holds int8's bound."""
    import collections

    result = export(str(tiny_models["bert"]), tmp_path / "q", pooling="attention", precision="int8", optimize=True,
                    exporter="dynamo", max_length=64)
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    counts = collections.Counter(n.op_type for n in model.graph.node)
    assert counts["MatMulInteger"] == result.manifest.graph["quantization"]["quantized_matmuls"] > 0
    assert result.manifest.graph["fusions"]["MultiHeadAttention"] == L
    pooler = [n for n in model.graph.node if n.name.startswith("/pooler/")]
    assert any(n.op_type == "MatMul" for n in pooler) and not any(n.op_type == "MatMulInteger" for n in pooler)
    assert verify(tmp_path / "q").passed
