"""Export variants through the real exporter, optimizer, quantizer and onnxruntime: fused op counts per
architecture, fp16 with a float32 pooler, int8 within its cosine bound, and the combinations that are refused."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import ARCHITECTURES
from poolx.cli import app
from poolx.errors import ParityError, UsageError
from poolx.exporter.export import export
from poolx.manifest import Manifest
from poolx.parity.verify import verify
from poolx.variants import INT8, PRECISIONS, Variant

L = 4  # layers of the tiny models


def expected_fusions(arch: str) -> dict:
    """What onnxruntime's transformer optimizer fuses on poolx's TorchScript graph of `arch`, as its backbone
    adapter declares (RoBERTa computes position ids from input_ids, so its embedding stays a LayerNormalization;
    DeBERTa's disentangled attention is not fused)."""
    from poolx.models.backbones import adapter_for
    from conftest import tiny_config

    return adapter_for(tiny_config(arch)).expected_fusions(L)


def ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_optimize_fuses_the_expected_ops_and_verifies(arch, tiny_models, tmp_path):
    result = export(str(tiny_models[arch]), tmp_path / "e", pooling="mean", optimize=True)
    graph = result.manifest.graph
    assert graph["fusions"] == expected_fusions(arch)
    assert result.manifest.variant.to_json() == {"precision": "fp32", "fused": True, "target": "cpu"}
    counts = ops(tmp_path / "e" / "model.onnx")
    for op, n in expected_fusions(arch).items():
        assert counts[op] == n
    report = verify(tmp_path / "e")
    assert report.variant == "fp32 optimized for cpu"
    assert report.outputs[0].atol == 1e-4 and report.outputs[0].max_abs < 1e-4  # held to the fp32 bound


def test_optimized_graph_keeps_hidden_states_output(tiny_models, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "e", pooling="weighted", layer_start=1, optimize=True,
           raw_outputs=["hidden_states"])
    assert verify(tmp_path / "e").passed


def test_fp16_keeps_io_and_pooler_in_float32_and_passes_its_cosine_bound(tiny_models, tmp_path):
    result = export(str(tiny_models["bert"]), tmp_path / "e", pooling="mean", num_labels=2, precision="fp16")
    assert result.manifest.variant.to_json() == {"precision": "fp16", "fused": True, "target": "cuda"}
    model = onnx.load(str(tmp_path / "e" / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)  # the backbone is fp16
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.FLOAT)
    pooler_weights = {i for n in model.graph.node if n.name.startswith(("/pooler/", "/head/")) for i in n.input}
    for t in model.graph.initializer:
        if t.name in pooler_weights:
            assert t.data_type != onnx.TensorProto.FLOAT16, t.name
    inferred = onnx.shape_inference.infer_shapes(model)
    pooler_outputs = {o for n in model.graph.node if n.name.startswith("/pooler/") for o in n.output}
    typed = [v for v in inferred.graph.value_info if v.name in pooler_outputs]
    assert typed and all(v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for v in typed)
    report = verify(tmp_path / "e")  # onnxruntime's CPU kernels run the fp16 graph here
    assert report.variant == "fp16 optimized for cuda"
    assert all(o.cosine_bound == 0.999 and o.atol is None and o.min_cosine > 0.999 for o in report.outputs)


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
def test_int8_quantizes_the_backbone_matmuls_and_stays_within_its_bound(arch, tiny_models, tmp_path):
    result = export(str(tiny_models[arch]), tmp_path / "e", pooling="attention")
    base = ops(tmp_path / "e" / "model.onnx")
    result = export(str(tiny_models[arch]), tmp_path / "q", pooling="attention", precision="int8")
    q = result.manifest.graph["quantization"]
    assert q["calibration_min_cosine"] >= 0.995 and q["calibration_texts"] > 40
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    counts = collections.Counter(n.op_type for n in model.graph.node)
    assert counts["MatMulInteger"] == q["quantized_matmuls"] > 0
    pooler_matmuls = [n for n in model.graph.node if n.name.startswith("/pooler/") and n.op_type == "MatMul"]
    assert pooler_matmuls and len(pooler_matmuls) == sum(
        1 for n in onnx.load(str(tmp_path / "e" / "model.onnx")).graph.node
        if n.name.startswith("/pooler/") and n.op_type == "MatMul"
    )  # the attention pooler's own MatMuls stay float32
    assert base["MatMul"] > counts["MatMul"]
    report = verify(tmp_path / "q")
    assert report.variant == "int8 for cpu" and report.outputs[0].min_cosine >= 0.99


def test_int8_verify_fails_loudly_outside_its_bound(tiny_models, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "q", pooling="mean", precision="int8")
    with pytest.raises(ParityError):
        verify(tmp_path / "q", tolerance=INT8.tolerance.override(atol=1e-6))  # int8 is not elementwise-exact
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "q"), "--min-cosine", "0.9999999999"])
    assert result.exit_code == 1


@pytest.mark.slow
def test_minilm_int8_min_cosine_at_least_099(minilm, tmp_path):
    result = export(None, tmp_path / "q", pooling="mean", precision="int8")
    report = verify(tmp_path / "q")
    assert report.outputs[0].min_cosine >= 0.99
    assert result.manifest.graph["quantization"]["alpha"] is not None  # plain int8 is not enough on MiniLM


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "fp16", "target": "cpu"}, "fp16 graphs are for --target cuda"),
    ({"precision": "int8", "target": "cuda"}, "int8 graphs are for --target cpu"),
    ({"precision": "bf16"}, "unknown precision"),
    ({"target": "tpu"}, "unknown target"),
    ({"optimize": True, "raw_outputs": ["attentions"]}, "attention probabilities"),
])
def test_refused_combinations(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Variant.resolve(**kwargs)


def test_cli_refuses_bad_variants_before_writing(tmp_path):
    runner = CliRunner()
    for args in (["--precision", "fp16", "--target", "cpu"], ["--optimize", "--outputs", "attentions"],
                 ["--calibration", str(tmp_path / "c.txt")]):
        result = runner.invoke(app, ["export", "-o", str(tmp_path / "out"), *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "out").exists()


def test_int8_calibration_file_is_used(tiny_models, tmp_path):
    texts = tmp_path / "domain.txt"
    texts.write_text("\n".join(f"ticket {i}: the printer on floor {i % 5} is out of toner again" for i in range(30)))
    result = CliRunner().invoke(app, ["export", str(tiny_models["bert"]), "-o", str(tmp_path / "q"),
                                       "--precision", "int8", "--calibration", str(texts)])
    assert result.exit_code == 0, result.output
    assert Manifest.read(tmp_path / "q").graph["quantization"]["calibration_texts"] == 30


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_cosine_bounds_also_bound_scale_and_one_wide_outputs(precision):
    from poolx.parity.compare import new_comparison

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 16)).astype(np.float32)
    for got, ok in ((ref * (1 + 1e-4), True), (ref * 50, False), (ref * 1.2, False)):
        c = new_comparison("x", PRECISIONS[precision].tolerance)
        c.add(got, ref, "case")
        assert c.passed == ok and c.min_cosine > 0.9999  # the direction is right every time
    narrow = np.array([[0.7], [-0.2], [0.4]], np.float32)  # a 1-wide output: its cosine is only a sign
    c = new_comparison("x", PRECISIONS[precision].tolerance)
    c.add(narrow * 3, narrow, "case")
    assert c.min_cosine == pytest.approx(1.0) and not c.passed


def test_comparison_figures_nonfinite_values_and_a_batch_axis_inside():
    """The figures of one comparison, computed in place, equal the plain float64 definitions; NaN or inf in either
    array fails it and is counted, while finite values whose difference overflows float32 are not NaN."""
    from poolx.parity.compare import Comparison

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)  # batch on axis 1, as attentions have it
    got = (ref + rng.standard_normal(ref.shape) * 1e-3).astype(np.float32)
    c = Comparison("x", atol=1e-2, rtol=1e-3)
    c.add(got, ref, "case", batch_axis=1)
    g, r = got.astype(np.float64), ref.astype(np.float64)
    rows_g, rows_r = np.moveaxis(g, 1, 0).reshape(5, -1), np.moveaxis(r, 1, 0).reshape(5, -1)
    cosines = (rows_g * rows_r).sum(1) / np.linalg.norm(rows_g, axis=1) / np.linalg.norm(rows_r, axis=1)
    assert c.min_cosine == pytest.approx(cosines.min(), abs=1e-12)
    assert c.rel_l2 == pytest.approx(np.linalg.norm(g - r) / np.linalg.norm(r), rel=1e-5)
    assert c.max_abs == pytest.approx(np.abs(g - r).max(), rel=1e-5)
    assert c.required_atol == pytest.approx((np.abs(g - r) - 1e-3 * np.abs(r)).max(), rel=1e-4)
    assert c.max_rel == pytest.approx((np.abs(g - r) / np.maximum(np.abs(r), 1e-6)).max(), rel=1e-5)
    assert c.passed and c.nonfinite == 0 and c.elements == ref.size
    bad = got.copy()
    bad[0, 0, 0, 0], bad[1, 2, 3, 4] = np.nan, np.inf
    c.add(bad, ref, "bad")
    assert not c.passed and c.nonfinite == 2 and c.worst_case == "bad: NaN or inf"
    huge = np.full((2, 3), 3e38, np.float32)  # huge - (-huge) overflows float32; both are finite
    c = Comparison("x", atol=None, rtol=0.0)
    c.add(huge, -huge, "case")
    assert c.nonfinite == 0 and c.min_cosine == pytest.approx(-1.0)


@pytest.mark.parametrize("pooling,options", [("concat", {}), ("weighted", {"layer_start": 1})])
def test_fp16_hidden_state_poolers_verify(pooling, options, tiny_models, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "e", pooling=pooling, precision="fp16", **options)
    report = verify(tmp_path / "e")
    assert report.passed and report.provider == "cpu"
    assert any("checked on the CPU" in n for n in report.notes)  # no CUDA here: said, not hidden


def test_verify_refuses_providers_that_would_fall_back(tiny_models, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "q", pooling="mean", precision="int8")
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "q"), "--provider", "cuda"])
    assert result.exit_code == 2 and "int8 graph runs on the CPU only" in result.output
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "q"), "--provider", "tensorrt"])
    assert result.exit_code == 2 and "TensorRT takes the plain fp32 export" in result.output


def test_target_alone_is_refused():
    with pytest.raises(UsageError, match="--target only changes"):
        Variant.resolve(target="cuda")


@pytest.mark.parametrize("signed", [False, True], ids=["uint8-weights", "int8-weights"])
def test_int8_graph_is_onnxruntimes_quantizer_graph_bit_for_bit(signed, tiny_models, tmp_path):
    """poolx quantizes the weights itself (vectorized) but writes what onnxruntime's `quantize_dynamic` writes: the
    same quantized weights, scales and zero points, the same node set, and the same outputs to the bit. One
    difference, on purpose: a head (a Gemm) stays fp32; quantize_dynamic turned it into MatMul + Add and quantized
    it although its node was excluded."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from poolx.exporter.quantize import FP32_PREFIXES, quantize_matmuls
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.runtime.tokenizer import TextEncoder

    export(str(tiny_models["bert"]), tmp_path / "e", pooling="attention")
    graph = tmp_path / "e" / "model.onnx"
    model = onnx.load(str(graph))
    excluded = [n.name for n in model.graph.node if n.name.startswith(FP32_PREFIXES)]
    quantize_dynamic(str(graph), str(tmp_path / "ort.onnx"), per_channel=True, op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8 if signed else QuantType.QUInt8, nodes_to_exclude=excluded)
    ours, theirs = quantize_matmuls(model, set(excluded), signed), onnx.load(str(tmp_path / "ort.onnx"))
    onnx.save(ours, str(tmp_path / "ours.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    for t in theirs.graph.initializer:
        assert weights[t.name].dtype == numpy_helper.to_array(t).dtype
        np.testing.assert_array_equal(weights[t.name], numpy_helper.to_array(t), err_msg=t.name)
    assert len(weights) == len(theirs.graph.initializer)
    nodes = lambda m: sorted((n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node)  # noqa: E731
    assert nodes(ours) == nodes(theirs)
    assert sum(n.op_type == "MatMulInteger" for n in ours.graph.node) == 24  # 4 layers x (Q, K, V, O, up, down)
    feeds = TextEncoder(tmp_path / "e", Manifest.read(tmp_path / "e"))(VERIFY_TEXTS[:8])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = lambda p: ort.InferenceSession(str(p), options).run(None, feeds)  # noqa: E731
    for a, b in zip(run(tmp_path / "ours.onnx"), run(tmp_path / "ort.onnx")):
        np.testing.assert_array_equal(a, b)
    export(str(tiny_models["bert"]), tmp_path / "h", pooling="mean", num_labels=2)
    headed = onnx.load(str(tmp_path / "h" / "model.onnx"))
    quantized = quantize_matmuls(headed, {n.name for n in headed.graph.node if n.name.startswith(FP32_PREFIXES)}, signed)
    assert [n.op_type for n in quantized.graph.node if n.name.startswith("/head/")] == ["Gemm"]


@pytest.mark.parametrize("signed_reaches_bound", [True, False], ids=["int8-weights-kept", "uint8-fallback"])
def test_int8_weights_first_uint8_only_when_they_miss_the_bound_without_vnni(signed_reaches_bound, tiny_models, tmp_path, monkeypatch):
    """Without VNNI, int8 weights (onnxruntime's U8S8 kernels, faster than U8U8)
    are tried first and kept when the measured cosine reaches the bound; uint8 weights only when it does not. The
    measured cosine of int8-weight graphs is bent here to make them miss the bound."""
    import poolx.exporter.quantize as quantize

    monkeypatch.setattr(quantize, "has_vnni", lambda: False)
    real_quantize, real_cosine, last = quantize._quantize, quantize._min_cosine, {}

    def recording(model, target, keep_fp32=(), signed=True):
        last["signed"] = signed
        real_quantize(model, target, keep_fp32, signed)

    monkeypatch.setattr(quantize, "_quantize", recording)
    monkeypatch.setattr(quantize, "_min_cosine", lambda *a: real_cosine(*a) if signed_reaches_bound or not last["signed"] else 0.5)
    result = export(str(tiny_models["bert"]), tmp_path / "q", pooling="mean", precision="int8")
    q = result.manifest.graph["quantization"]
    assert q["weights"] == ("int8" if signed_reaches_bound else "uint8")
    weight_types = {t.data_type for t in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.initializer if t.name.endswith("_quantized")}
    assert weight_types == {onnx.TensorProto.INT8 if signed_reaches_bound else onnx.TensorProto.UINT8}


# ---- the dynamo exporter's fusions (issue 15) -----------------------------------------------------------------------
def _dynamo_family_model(model_type: str, directory):
    """test_families' tiny model of `model_type` (2 layers) at `directory`."""
    import test_families as f

    from conftest import tiny_tokenizer

    if model_type in f.DECODERS:
        style, extra = f.DECODERS[model_type]
        tokenizer = f.bpe_tokenizer(style)
        return f.save_tiny(model_type, directory, tokenizer, **f.TINY, **extra, vocab_size=len(tokenizer),
                           num_key_value_heads=2, max_position_embeddings=512, pad_token_id=None,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    tokenizer = tiny_tokenizer()
    config = dict(f.TINY, vocab_size=len(tokenizer), **f.ENCODERS[model_type])
    if model_type == "distilbert":
        config = dict(f.ENCODERS[model_type], vocab_size=len(tokenizer))
    return f.save_tiny(model_type, directory, tokenizer, **config)


def _dynamo_families():
    import test_families as f

    return [t for t in [*sorted(f.ENCODERS), *f.DECODERS] if t != "albert"]  # ALBERT: GENERIC, nothing pinned


@pytest.mark.xdist_group("test_dynamo")  # with tests/test_dynamo.py: torch.export's first-call start-up paid once
@pytest.mark.parametrize("model_type", [
    pytest.param(t, marks=() if t == "qwen3" else pytest.mark.skipif(
        not __import__("os").environ.get("POOLX_DYNAMO_ALL"),
        reason="one dynamo export per family (5-15 s each): set POOLX_DYNAMO_ALL=1; qwen3 runs every time",
    ))
    for t in _dynamo_families()
])
def test_dynamo_optimize_fuses_the_adapters_ops_and_verifies(model_type, tmp_path):
    """The fused ops of each family's dynamo graph (onnxscript's fusions) are what its adapter declares: attention
    fused as Attention (BERT-style) or MultiHeadAttention (rotary encoders, decoders), except DeBERTa and MPNet
    (`dynamo_unfused` says why). Qwen3 (rotary, grouped-query, causal) runs on every suite run."""
    from transformers import AutoConfig

    from poolx.models.backbones import adapter_for

    model = _dynamo_family_model(model_type, tmp_path / "m")
    result = export(str(model), tmp_path / "e", pooling="mean", optimize=True, exporter="dynamo", max_length=32)
    config = AutoConfig.from_pretrained(model)
    adapter = adapter_for(config)
    expected = adapter.expected_fusions(2, config, exporter="dynamo")
    assert result.manifest.graph["exporter"] == "dynamo" and result.manifest.graph["fusions"] == expected
    assert ("Attention" in expected or "MultiHeadAttention" in expected) == (adapter.dynamo_unfused is None)
    counts = ops(tmp_path / "e" / "model.onnx")
    assert all(counts[op] == n for op, n in expected.items())
    report = verify(tmp_path / "e")
    assert report.passed and report.outputs[0].max_abs < 1e-4
