"""The two types every consumer asks: `Variant` (what a graph is) and `Provider` (what runs it), and the
manifest that stores the variant. Fast: no model is exported here except where an old manifest is read back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from poolx.errors import BrokenExportError, ProviderUnavailableError, UsageError
from poolx.manifest import MANIFEST, Manifest
from poolx.providers import CPU, CUDA, OPENVINO, PROVIDERS, TENSORRT, ShapeProfile, get_provider
from poolx.variants import FP16, FP32, INT8, PRECISIONS, Variant, bench_variants


def test_every_provider_is_described_once():
    assert set(PROVIDERS) == {"cpu", "cuda", "tensorrt", "openvino"}
    assert get_provider("cuda") is CUDA and get_provider(CUDA) is CUDA
    assert {p.runtime for p in PROVIDERS.values()} == {"onnxruntime", "openvino"}
    assert [p.name for p in PROVIDERS.values() if p.runtime == "openvino"] == ["openvino"]
    with pytest.raises(UsageError, match="unknown provider 'gpu'; choose auto, cpu, cuda, tensorrt, openvino"):
        get_provider("gpu")
    assert (CPU.gpu, CUDA.gpu, TENSORRT.gpu) == (False, True, True)
    assert (CPU.io_device, CUDA.io_device, TENSORRT.io_device) == (None, "cuda", "cuda")
    assert CPU.run_cost < CUDA.run_cost == TENSORRT.run_cost
    assert TENSORRT.max_batch == 256 and CPU.max_batch is None


def test_cpu_is_always_available_and_gpu_providers_say_what_is_missing():
    assert CPU.ort_providers() == ["CPUExecutionProvider"] and CPU.available()
    for provider in (CUDA, TENSORRT):  # no onnxruntime-gpu on these machines
        with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
            provider.ort_providers()
        assert not provider.available()


def test_tensorrt_profile_is_one_object_for_the_embedder_and_triton():
    profile = ShapeProfile.for_graph(max_length=64, max_batch=256)
    assert (profile.min, profile.opt, profile.max) == ((1, 1), (32, 64), (256, 64))
    assert TENSORRT.profile(512) == ShapeProfile((1, 1), (32, 128), (256, 512))
    assert TENSORRT.profile(512, max_batch=8).opt == (8, 128)  # Triton's max_batch_size caps it
    shapes = profile.shapes(["input_ids", "attention_mask"])
    assert shapes["trt_profile_max_shapes"] == "input_ids:256x64,attention_mask:256x64"
    with pytest.raises(ValueError, match="TensorRT options need"):
        TENSORRT.options()
    assert CPU.options() == {} and CUDA.options(device_id=1) == {"CUDAExecutionProvider": {"device_id": "1"}}


def test_precisions_hold_their_bounds_targets_and_providers():
    assert set(PRECISIONS) == {"fp32", "fp16", "int8"}
    assert FP32.tolerance.atol == 1e-4 and FP16.tolerance.min_cosine == 0.999 and INT8.tolerance.min_cosine == 0.99
    assert FP16.always_fused and FP16.targets == (CUDA,) and INT8.targets == (CPU, OPENVINO)
    assert Variant(INT8, False, OPENVINO).tolerance.min_cosine == 0.995  # its own bound; onnxruntime's int8 keeps 0.99
    assert Variant(INT8, False, OPENVINO).tolerance_on(OPENVINO).min_cosine == 0.995  # not bf16's 0.999


@pytest.mark.parametrize("variant,runs_on,label,name", [
    (Variant(), (CPU, CUDA, TENSORRT, OPENVINO), "fp32", "fp32"),
    (Variant(FP32, True, CPU), (CPU, CUDA), "fp32 optimized for cpu", "fp32-optimized"),
    (Variant(FP32, True, CUDA), (CPU, CUDA), "fp32 optimized for cuda", "fp32-optimized-cuda"),
    (Variant(FP16, True, CUDA), (CPU, CUDA), "fp16 optimized for cuda", "fp16-cuda"),
    (Variant(INT8, False, CPU), (CPU,), "int8 for cpu", "int8-cpu"),
    (Variant(INT8, True, CPU), (CPU,), "int8 optimized for cpu", "int8-optimized-cpu"),
    (Variant(INT8, False, OPENVINO), (OPENVINO,), "int8 for openvino", "int8-openvino"),
])
def test_what_runs_each_variant(variant, runs_on, label, name):
    assert variant.runs_on == runs_on and variant.label == label and variant.name == name
    assert Variant.from_json(variant.to_json()) == variant
    for provider in PROVIDERS.values():
        if provider in runs_on:
            assert variant.check_provider(provider) is provider
        else:
            with pytest.raises((UsageError, ProviderUnavailableError)):
                variant.check_provider(provider)


def test_auto_picks_cuda_only_where_it_runs_the_graph_at_full_speed(monkeypatch):
    import poolx.providers as providers

    cpu = OPENVINO if providers.openvino_preferred() else CPU  # a plain graph on a CPU with bf16 goes to OpenVINO
    assert Variant().choose("auto", gpu=True) is CUDA and Variant().choose("auto", gpu=False) is cpu
    assert Variant(INT8, False, CPU).choose("auto", gpu=True) is CPU
    assert Variant(FP16, True, CUDA).choose("auto", gpu=True) is CUDA
    assert Variant().choose("auto") is cpu  # this onnxruntime has no CUDA
    monkeypatch.setattr(providers, "openvino_preferred", lambda: False)
    assert Variant().choose("auto") is CPU
    assert Variant(FP16, True, CUDA).slow_on(CPU) and Variant().slow_on(CPU) is None
    with pytest.raises(ProviderUnavailableError, match="int8 graph runs on the CPU only"):
        Variant(INT8, False, CPU).choose("cuda")
    with pytest.raises(UsageError, match="TensorRT takes the plain fp32 export"):
        Variant(FP32, True, CPU).choose("tensorrt")


@pytest.mark.parametrize("kwargs,expected", [
    ({}, Variant()),
    ({"optimize": True}, Variant(FP32, True, CPU)),
    ({"optimize": True, "target": "cuda"}, Variant(FP32, True, CUDA)),
    ({"precision": "fp16"}, Variant(FP16, True, CUDA)),
    ({"precision": "int8"}, Variant(INT8, False, CPU)),
    ({"precision": "int8", "optimize": True}, Variant(INT8, True, CPU)),
])
def test_resolve_fills_in_what_a_precision_implies(kwargs, expected):
    assert Variant.resolve(**kwargs) == expected


def test_bench_builds_the_fast_variants_of_each_device():
    assert [v.short_name for v in bench_variants(CPU)] == ["fp32", "fp32-optimized", "int8"]
    assert [v.short_name for v in bench_variants(CUDA)] == ["fp32-optimized", "fp16"]


@pytest.mark.parametrize("graph,expected", [
    ({"file": "model.onnx"}, Variant()),
    ({"file": "model.onnx", "precision": "fp32", "optimized": True, "target": "cpu"}, Variant(FP32, True, CPU)),
    ({"file": "model.onnx", "precision": "fp16", "optimized": True, "target": "cuda"}, Variant(FP16, True, CUDA)),
    ({"file": "model.onnx", "precision": "int8", "optimized": False, "target": "cpu"}, Variant(INT8, False, CPU)),
])
def test_schema_1_manifests_keep_their_variant(bert_mean, tmp_path, graph, expected):
    """An export written before the manifest had a variant section still reads, runs and verifies."""
    old = tmp_path / "old"
    shutil.copytree(bert_mean, old)
    data = json.loads((old / MANIFEST).read_text())
    data.pop("variant")
    data["schema_version"] = 1
    data["graph"] = {**{k: v for k, v in data["graph"].items()}, **graph}
    (old / MANIFEST).write_text(json.dumps(data))
    assert Manifest.read(old).variant == expected
    if expected.is_plain:
        from poolx.parity.verify import verify
        from poolx.runtime.embedder import Embedder

        assert verify(old).passed
        assert np.isfinite(Embedder(old, "cpu").embed(["an old export"])).all()


def test_a_manifest_from_a_newer_poolx_or_with_a_bad_variant_is_refused(bert_mean, tmp_path):
    for mutate, needle in (
        (lambda d: d.update(schema_version=99), "newer poolx"),
        (lambda d: d.update(variant={"precision": "bf17", "fused": False, "target": "cpu"}), "unknown precision"),
        (lambda d: d.update(variant={"precision": "fp32", "fused": "yes", "target": "cpu"}), "not a graph variant"),
    ):
        broken = tmp_path / needle.replace(" ", "-")
        shutil.copytree(bert_mean, broken)
        data = json.loads((broken / MANIFEST).read_text())
        mutate(data)
        (broken / MANIFEST).write_text(json.dumps(data))
        with pytest.raises(BrokenExportError, match=needle):
            Manifest.read(broken)
