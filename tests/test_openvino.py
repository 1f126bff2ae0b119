"""`--provider openvino`: OpenVINO's CPU plugin runs the plain fp32 export (bf16 where the CPU has it, f32 here on a
CPU without it), says which in `.provider` and `/info`, is held by verify to fp32's bound in f32 and to min cosine
0.999 in bf16, refuses graphs it cannot run in one line, is what `auto` picks only where it was measured faster
(installed and bf16), and runs from several threads at once."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from poolx.cli import app
from poolx.errors import UsageError
from poolx.exporter.export import export
from poolx.parity.texts import VERIFY_TEXTS
from poolx.parity.verify import verify
from poolx.providers import CPU, OPENVINO, get_provider
from poolx.runtime.embedder import Embedder
from poolx.variants import BF16_TOLERANCE, FP32, INT8, Variant

pytest.importorskip("openvino")

TEXTS = ["A man is playing a guitar.", "", "Ein Mann spielt Gitarre.", "x", "word " * 90, "naïve café 你好"]


def test_embedder_runs_the_plain_export_and_says_its_precision(bert_mean):
    from poolx.runtime.openvino import cpu_precision

    embedder = Embedder(bert_mean, "openvino")
    assert embedder.provider is OPENVINO and embedder.provider.description == f"openvino ({cpu_precision()})"
    assert embedder.session.precision == cpu_precision()
    assert_within_its_bound(embedder.embed(TEXTS), Embedder(bert_mean, "cpu").embed(TEXTS), atol=1e-5)


def assert_within_its_bound(got, want, atol):
    """f32: elementwise to `atol`; bf16 (a CPU with AVX512-BF16 or AMX): min cosine 0.999, bf16's bound."""
    from poolx.runtime.openvino import cpu_precision

    if cpu_precision() == "f32":
        np.testing.assert_allclose(got, want, atol=atol)
    else:
        assert (np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min() >= 0.999


def test_verify_on_openvino_holds_its_precisions_bound(bert_mean):
    report = verify(bert_mean, provider="openvino")
    assert report.passed and report.provider.startswith("openvino (")
    assert any("openvino ran the graph in" in note for note in report.notes)
    assert report.outputs[0].min_cosine > 0.999


def test_bf16_is_held_to_a_cosine_bound_and_f32_to_fp32s(monkeypatch):
    import poolx.runtime.openvino as ov

    monkeypatch.setattr(ov, "_PRECISION", "bf16")
    assert OPENVINO.precision == "bf16" and OPENVINO.description == "openvino (bf16)"
    assert Variant().tolerance_on(OPENVINO) is BF16_TOLERANCE
    assert BF16_TOLERANCE.min_cosine == 0.999 and BF16_TOLERANCE.atol is None
    monkeypatch.setattr(ov, "_PRECISION", "f32")
    assert Variant().tolerance_on(OPENVINO) is FP32.tolerance
    assert Variant().tolerance_on(CPU) is FP32.tolerance and CPU.precision is None


def test_a_bf16_run_outside_its_bound_fails_verify(bert_mean, monkeypatch):
    """The bound is enforced, not reported: an OpenVINO run that drifts past min cosine 0.999 fails verify."""
    import poolx.runtime.openvino as ov
    from poolx.errors import ParityError

    monkeypatch.setattr(ov, "_PRECISION", "bf16")
    run = ov.OpenVinoSession.run

    def drifting(self, names, feeds):  # a bf16 kernel gone wrong: every embedding bent by ~3 degrees
        out = run(self, names, feeds)
        return [o + 0.06 * np.linalg.norm(o, axis=-1, keepdims=True) * np.sign(np.arange(o.shape[-1]) % 2 - 0.5) for o in out]

    monkeypatch.setattr(ov.OpenVinoSession, "run", drifting)
    with pytest.raises(ParityError, match="sentence_embedding"):
        verify(bert_mean, provider="openvino", texts=VERIFY_TEXTS[:6])


@pytest.mark.parametrize("variant", [Variant(FP32, True, CPU), Variant(INT8, False, CPU)], ids=lambda v: v.name)
def test_graphs_it_cannot_run_are_refused_in_one_line(variant):
    with pytest.raises(UsageError, match="OpenVINO takes the plain fp32 export"):
        variant.check_provider("openvino")
    assert OPENVINO not in variant.runs_on


def test_cli_refuses_an_optimized_export_with_exit_2(tiny_models, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "o", pooling="mean", optimize=True, max_length=64)
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "o"), "hi", "--provider", "openvino"])
    assert result.exit_code == 2 and "OpenVINO takes the plain fp32 export" in result.stderr
    assert "Traceback" not in result.output


def test_auto_picks_openvino_only_where_preferred(monkeypatch):
    import poolx.providers as providers

    monkeypatch.setattr(providers, "openvino_preferred", lambda: True)
    assert Variant().choose("auto", gpu=False) is OPENVINO
    assert Variant(FP32, True, CPU).choose("auto", gpu=False) is CPU  # a fused graph: onnxruntime
    monkeypatch.setattr(providers, "openvino_preferred", lambda: False)
    assert Variant().choose("auto", gpu=False) is CPU
    assert get_provider("openvino") is OPENVINO


def test_openvino_is_preferred_only_with_bf16(monkeypatch):
    import poolx.runtime.openvino as ov
    from poolx.providers import openvino_preferred

    for precision, preferred in (("bf16", True), ("f32", False)):
        monkeypatch.setattr(ov, "_PRECISION", precision)
        assert openvino_preferred() is preferred


def test_concurrent_runs_give_the_sequential_numbers(bert_mean):
    embedder = Embedder(bert_mean, "openvino")
    texts = [f"{VERIFY_TEXTS[i % len(VERIFY_TEXTS)]} {i}" for i in range(48)]
    want = embedder.embed(texts, batch_size=4)
    with ThreadPoolExecutor(6) as pool:
        parts = list(pool.map(lambda k: embedder.embed(texts[k:k + 4], batch_size=4), range(0, 48, 4)))
    np.testing.assert_allclose(np.concatenate(parts), want, atol=1e-6)


def test_cli_embed_and_the_server_say_openvino(bert_mean):
    from test_serve import start_server

    result = CliRunner().invoke(app, ["embed", str(bert_mean), "hello", "--provider", "openvino"])
    assert result.exit_code == 0, result.output
    proc, url = start_server(bert_mean, "--provider", "openvino")
    try:
        info = httpx.get(f"{url}/info").json()
        assert info["provider"].startswith("openvino (")
        r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS[:3]}, timeout=30)
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        assert_within_its_bound(got, Embedder(bert_mean, "cpu").embed(TEXTS[:3]), atol=1e-4)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_a_throughput_embedder_runs_its_streams_batches_at_once_with_the_same_numbers(bert_mean, monkeypatch):
    """`throughput=True` (what `poolx embed -i` and bench's corpus workload ask for) compiles OpenVINO for parallel
    streams and embed() keeps them all busy: as many batches run at once as the session takes (2 on two cores,
    counted), rows back in the caller's order, the numbers of the one-batch-at-a-time latency embedder."""
    import threading
    import time

    embedder = Embedder(bert_mean, "openvino", threads=2, throughput=True)
    assert embedder.session.parallel >= 2
    assert Embedder(bert_mean, "openvino", threads=2, throughput=False).session.parallel == 1
    texts = [f"{i} " + "word " * (i % 37) for i in range(96)]
    busy, most, lock = [0], [0], threading.Lock()
    run = embedder.session.run

    def counting(names, feeds):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.01)  # long enough for the pool's other threads to enter
        try:
            return run(names, feeds)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(embedder.session, "run", counting)
    got = embedder.embed(texts, batch_size=8)
    assert most[0] == embedder.session.parallel
    want = Embedder(bert_mean, "openvino", threads=2, throughput=False).embed(texts, batch_size=8)
    assert (np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min() > 0.9999


# ---- int8 for OpenVINO (--precision int8 --target openvino): NNCF's static QDQ graph -------------------------------
@pytest.fixture(scope="module")
def bert_int8_openvino(tiny_models, tmp_path_factory):
    pytest.importorskip("nncf")
    out = tmp_path_factory.mktemp("int8-openvino") / "o"
    export(str(tiny_models["bert"]), out, pooling="mean", max_length=64, precision="int8", target="openvino")
    return out


def test_int8_for_openvino_is_nncfs_qdq_graph_held_to_its_bound(bert_int8_openvino, bert_mean):
    import collections

    import onnx

    from poolx.manifest import Manifest
    from poolx.variants import OPENVINO_INT8_TOLERANCE

    manifest = Manifest.read(bert_int8_openvino)
    assert manifest.variant == Variant(INT8, False, OPENVINO) and manifest.variant.name == "int8-openvino"
    quantization = manifest.graph["quantization"]
    assert quantization["method"].startswith("NNCF") and quantization["calibration_min_cosine"] >= 0.997
    ops = collections.Counter(n.op_type for n in onnx.load(str(bert_int8_openvino / "model.onnx")).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    # every MatMul by a weight in the plain graph (Q, K, V, attention output, FFN up and down per layer) is int8,
    # less those kept fp32 to hold the accuracy
    from poolx.exporter.quantize import weight_groups

    plain = sum(map(len, weight_groups(onnx.load(str(bert_mean / "model.onnx"))).values()))
    assert plain == 24 and quantization["quantized_matmuls"] == plain - len(quantization["kept_fp32"])
    pooler = [n for n in onnx.load(str(bert_int8_openvino / "model.onnx")).graph.node if n.name.startswith("/pooler/")]
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in pooler)  # the pooler stays fp32
    report = verify(bert_int8_openvino)  # on OpenVINO (the graph's target), to int8-for-OpenVINO's bound
    assert report.passed and report.provider.startswith("openvino (") and report.variant == "int8 for openvino"
    assert manifest.variant.tolerance_on(OPENVINO) is OPENVINO_INT8_TOLERANCE and OPENVINO_INT8_TOLERANCE.min_cosine == 0.995
    assert report.outputs[0].min_cosine >= 0.995


def test_int8_for_openvino_runs_there_only_and_auto_picks_it(bert_int8_openvino, bert_mean, tmp_path):
    embedder = Embedder(bert_int8_openvino)  # auto
    assert embedder.provider is OPENVINO
    got, want = embedder.embed(TEXTS), Embedder(bert_mean, "cpu").embed(TEXTS)  # the same tiny BERT, fp32
    assert (np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min() >= 0.995
    with pytest.raises(UsageError, match="runs on OpenVINO only"):
        Embedder(bert_int8_openvino, "cpu")
    result = CliRunner().invoke(app, ["embed", str(bert_int8_openvino), "hi", "--provider", "cpu"])
    assert result.exit_code == 2 and "runs on OpenVINO only" in result.stderr and "Traceback" not in result.output
    from poolx.deploy.triton import write_triton_repo

    with pytest.raises(UsageError, match="runs on OpenVINO only"):
        write_triton_repo(bert_int8_openvino, tmp_path / "triton")


@pytest.mark.parametrize("args, message", [
    (dict(precision="fp32", target="openvino"), "OpenVINO takes the plain fp32 graph"),
    (dict(precision="fp32", optimize=True, target="openvino"), "OpenVINO takes the plain fp32 graph"),
    (dict(precision="fp16", target="openvino"), "OpenVINO takes the plain fp32 graph"),
    (dict(precision="int8", optimize=True, target="openvino"), "drop --optimize"),
])
def test_what_is_not_built_for_openvino_is_refused_before_loading(args, message):
    with pytest.raises(UsageError, match=message):
        Variant.resolve(**args)


def test_bench_builds_the_int8_graph_for_openvino():
    from poolx.variants import bench_variants

    assert bench_variants(OPENVINO) == (Variant(), Variant(INT8, False, OPENVINO))
