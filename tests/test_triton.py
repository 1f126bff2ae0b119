"""`write_triton_repo`: the configs parsed with Triton's own protobuf schema, the ONNX config against the graph,
and the tokenizer model's model.py run end to end through a stand-in `triton_python_backend_utils`, its outputs
fed to onnxruntime and compared with the Embedder. Triton itself is not run (no server here)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from poolx.deploy import triton as deploy
from poolx.deploy import write_triton_repo
from poolx.deploy.triton_tokenizer import encode, load
from poolx.errors import BrokenExportError, UsageError
from poolx.exporter.export import export
from poolx.parity.texts import VERIFY_TEXTS
from poolx.manifest import Manifest
from poolx.runtime.embedder import Embedder
from poolx.runtime.tokenizer import TextEncoder
from poolx.spec import BATCH, SEQUENCE, TensorSpec

ModelConfig = model_config_pb2.ModelConfig
# The keys onnxruntime_backend accepts for its "tensorrt" accelerator (README's mapping table, src/onnxruntime.cc);
# it rejects any other key.
TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "int8_calibration_table_name", "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes",
    "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path",
    "trt_ep_context_embed_mode",
}
ONNX_TYPES = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32"}


@pytest.fixture(scope="module")
def exports(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """plain: bert fp32 (token_type_ids); int8: distilbert with a logits head (no token_type_ids); optimized:
    roberta, fused, with its weights as external data."""
    root = tmp_path_factory.mktemp("triton-exports")
    export(str(tiny_models["bert"]), root / "bert-mean", pooling="mean", max_length=64)
    export(str(tiny_models["distilbert"]), root / "distil.int8", pooling="mean", max_length=64, num_labels=2,
           precision="int8")
    export(str(tiny_models["roberta"]), root / "roberta", pooling="mean", max_length=64, optimize=True,
           external_data="always")
    return {"plain": root / "bert-mean", "int8": root / "distil.int8", "optimized": root / "roberta"}


@pytest.fixture(scope="module")
def repos(exports, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton-repos")
    return {kind: write_triton_repo(directory, root / kind) for kind, directory in exports.items()}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), ModelConfig())


def params(accelerator) -> dict[str, str]:
    return dict(accelerator.parameters)


def test_layout(repos):
    files = sorted(p.relative_to(repos["plain"]).as_posix() for p in repos["plain"].rglob("*"))
    assert files == [
        "bert-mean", "bert-mean/1", "bert-mean/config.pbtxt",
        "bert-mean_onnx", "bert-mean_onnx/1", "bert-mean_onnx/1/model.onnx", "bert-mean_onnx/config.pbtxt",
        "bert-mean_tokenizer", "bert-mean_tokenizer/1", "bert-mean_tokenizer/1/model.py",
        "bert-mean_tokenizer/1/poolx_tokenizer.json", "bert-mean_tokenizer/1/tokenizer.json",
        "bert-mean_tokenizer/config.pbtxt",
    ]
    assert (repos["plain"] / "bert-mean_tokenizer/1/model.py").read_text() == Path(
        deploy.__file__).with_name("triton_tokenizer.py").read_text()
    assert (repos["int8"] / "distil_int8").is_dir()  # the name from "distil.int8", sanitized
    external = sorted(p.name for p in (repos["optimized"] / "roberta_onnx/1").iterdir())
    assert external == ["model.onnx", "model.onnx.data"]  # the data file keeps the name the graph references
    assert not list(repos["plain"].parent.glob(".*"))  # no temporary directories left


def test_plain_fp32_runs_on_tensorrt_with_fp16_profiles_and_cache(repos, exports):
    config = parse(repos["plain"] / "bert-mean_onnx/config.pbtxt")
    assert (config.name, config.platform, config.backend) == ("bert-mean_onnx", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 64
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert list(config.dynamic_batching.preferred_batch_size) == [32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and set(params(trt)) <= TRT_KEYS
    names = Manifest.read(exports["plain"]).io.input_names
    assert names == ["input_ids", "attention_mask", "token_type_ids"]

    def shapes(batch, length):
        return ",".join(f"{n}:{batch}x{length}" for n in names)

    assert params(trt) == {
        "precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 32),
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/bert-mean_trt_cache",
        "trt_timing_cache_enable": "1", "trt_timing_cache_path": "/tmp/bert-mean_trt_cache",
        "trt_profile_min_shapes": shapes(1, 1), "trt_profile_opt_shapes": shapes(32, 64),
        "trt_profile_max_shapes": shapes(64, 64),
    }
    text = (repos["plain"] / "bert-mean_onnx/config.pbtxt").read_text()
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "registers the CUDA execution provider after TensorRT, so nodes TensorRT cannot take run on CUDA" in comments


def test_variants_run_on_cuda_or_cpu_without_tensorrt(repos, exports, tmp_path):
    optimized = parse(repos["optimized"] / "roberta_onnx/config.pbtxt")
    assert [g.kind for g in optimized.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert not optimized.HasField("optimization")
    int8 = parse(repos["int8"] / "distil_int8_onnx/config.pbtxt")
    assert [g.kind for g in int8.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert not int8.HasField("optimization")
    with pytest.raises(UsageError, match="int8"):
        write_triton_repo(exports["int8"], tmp_path / "r", kind="gpu")
    cpu = parse(write_triton_repo(exports["plain"], tmp_path / "cpu", kind="cpu", max_batch_size=8,
                                  name="m") / "m_onnx/config.pbtxt")
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert not cpu.HasField("optimization") and list(cpu.dynamic_batching.preferred_batch_size) == [8]


@pytest.mark.parametrize("kind", ["plain", "int8", "optimized"])
def test_onnx_config_agrees_with_the_graph(repos, kind):
    repo = repos[kind]
    (model,) = repo.glob("*_onnx")
    config = parse(model / "config.pbtxt")
    graph = onnx.load(str(model / "1" / "model.onnx")).graph  # loads model.onnx.data from beside it
    for declared, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]  # every graph output listed
        for tensor, value in zip(declared, values):
            assert model_config_pb2.DataType.Name(tensor.data_type) == ONNX_TYPES[value.type.tensor_type.elem_type]
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            assert dims[0] == -1 and list(tensor.dims) == dims[1:]  # batch dim dropped, dynamic ones -1
    if kind == "int8":
        assert [t.name for t in config.output] == ["sentence_embedding", "logits"]
        assert [t.name for t in config.input] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("kind", ["plain", "int8"])
def test_tokenizer_and_ensemble_configs_are_wired(repos, exports, kind):
    repo = repos[kind]
    name = next(p.name for p in repo.iterdir() if not p.name.endswith(("_onnx", "_tokenizer")))
    ensemble, tokenizer, model = (parse(repo / n / "config.pbtxt") for n in (name, f"{name}_tokenizer", f"{name}_onnx"))
    inputs = Manifest.read(exports[kind]).io.input_names
    string, int64 = model_config_pb2.TYPE_STRING, model_config_pb2.TYPE_INT64

    assert (tokenizer.backend, tokenizer.max_batch_size) == ("python", 64)
    assert [(t.name, t.data_type, list(t.dims)) for t in tokenizer.input] == [("TEXT", string, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in tokenizer.output] == [(n, int64, [-1]) for n in inputs]
    assert [g.kind for g in tokenizer.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]

    assert (ensemble.platform, ensemble.max_batch_size) == ("ensemble", 64)
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [("TEXT", string, [1])]
    fp32 = model_config_pb2.TYPE_FP32
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [("embedding", fp32, [32])]
    first, second = ensemble.ensemble_scheduling.step
    assert (first.model_name, second.model_name) == (f"{name}_tokenizer", f"{name}_onnx")
    assert first.model_version == second.model_version == -1
    assert dict(first.input_map) == {"TEXT": "TEXT"}
    assert dict(first.output_map) == dict(second.input_map) == {n: n for n in inputs}
    assert dict(second.output_map) == {"sentence_embedding": "embedding"}
    # each step's keys are that model's tensors
    assert set(first.output_map) == {t.name for t in tokenizer.output}
    assert set(second.input_map) == {t.name for t in model.input}
    assert set(second.output_map) <= {t.name for t in model.output}


def test_encode_is_text_encoder_plus_padding_to_the_multiple(exports, repos):
    manifest = Manifest.read(exports["plain"])
    reference = TextEncoder(exports["plain"], manifest)
    tokenizer, settings = load(repos["plain"] / "bert-mean_tokenizer/1")
    assert settings == {"max_length": 64, "pad_id": 0, "input_names": manifest.io.input_names, "pad_multiple": 16,
                        "prompt": ""}
    for texts in (list(VERIFY_TEXTS), [""], ["a", "Hello!"], [VERIFY_TEXTS[-1]]):
        check_padded(encode(tokenizer, texts, **settings), reference(texts), settings)


def check_padded(ours: dict, ref: dict, settings: dict) -> None:
    """`ours` is `ref` padded right to a multiple of pad_multiple (or max_length) with pad id and mask 0."""
    assert list(ours) == list(ref)
    length = ref["input_ids"].shape[1]
    padded = ours["input_ids"].shape[1]
    assert padded >= length and (padded % settings["pad_multiple"] == 0 or padded == settings["max_length"])
    assert padded < length + settings["pad_multiple"]
    for name, expected in ref.items():
        assert ours[name].dtype == np.int64
        np.testing.assert_array_equal(ours[name][:, :length], expected)
    extra = {n: a[:, length:] for n, a in ours.items()}
    assert (extra["input_ids"] == settings["pad_id"]).all() and not extra["attention_mask"].any()
    if "token_type_ids" in extra:
        assert not extra["token_type_ids"].any()


def fake_pb_utils() -> types.ModuleType:
    """The parts of Triton's triton_python_backend_utils that model.py uses, with the real signatures."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError(Exception):
        def __init__(self, message, code=None):
            super().__init__(message)
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._outputs, self._error = output_tensors, error

        def output_tensors(self):
            return self._outputs

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, inputs):
            self._inputs = inputs

        def inputs(self):
            return self._inputs

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs() if t.name() == name), None)

    def get_output_config_by_name(model_config, name):
        return next((o for o in model_config.get("output", []) if o["name"] == name), None)

    def triton_string_to_numpy(triton_type):
        numpy_types = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}
        return numpy_types[triton_type]

    for obj in (Tensor, TritonError, InferenceResponse, InferenceRequest, get_input_tensor_by_name,
                get_output_config_by_name, triton_string_to_numpy):
        setattr(pb, obj.__name__, obj)
    return pb


@pytest.mark.filterwarnings("ignore:.*were truncated")  # the long texts are, on purpose
@pytest.mark.parametrize("kind", ["plain", "int8", "optimized"])
def test_model_py_end_to_end_gives_the_embedders_embeddings(repos, exports, kind, monkeypatch):
    import onnxruntime as ort

    repo, export_dir = repos[kind], exports[kind]
    pb = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    (tokenizer_dir,) = repo.glob("*_tokenizer")
    spec = importlib.util.spec_from_file_location(f"triton_model_{kind}", tokenizer_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the copied file, importing the stand-in

    config = parse(tokenizer_dir / "config.pbtxt")
    model = module.TritonPythonModel()
    model.initialize({
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_instance_kind": "CPU", "model_instance_name": f"{config.name}_0", "model_instance_device_id": "0",
        "model_repository": str(tokenizer_dir), "model_version": "1", "model_name": config.name,
    })

    def request(values):
        return pb.InferenceRequest([pb.Tensor("TEXT", np.array(values, dtype=object).reshape(-1, 1))])

    batches = [list(VERIFY_TEXTS[:3]), list(VERIFY_TEXTS[3:])]  # 3 and 18 texts, the empty and the long ones
    responses = model.execute([
        request([t.encode() for t in batches[0]]),
        request([b"fine", b"\xff\xfe not utf-8"]),  # answered with an error; the other requests go on
        request(batches[1]),  # str values are taken as they are
    ])
    assert len(responses) == 3
    assert responses[1].has_error() and "UnicodeDecodeError" in responses[1].error().message()

    manifest = Manifest.read(export_dir)
    reference = TextEncoder(export_dir, manifest)
    settings = json.loads((tokenizer_dir / "1" / "poolx_tokenizer.json").read_text())
    graph = next(repo.glob("*_onnx")) / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    embedder = Embedder(export_dir, "cpu")
    for texts, response in zip(batches, (responses[0], responses[2])):
        assert not response.has_error()
        outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
        check_padded(outputs, reference(texts), settings)
        (embedding,) = session.run(["sentence_embedding"], outputs)  # what the ensemble's second step computes
        expected = embedder.embed(texts)
        if kind == "int8":  # dynamic int8 quantizes each activation tensor with one scale for the whole batch,
            norms = np.linalg.norm(embedding, axis=1) * np.linalg.norm(expected, axis=1)
            cosine = (embedding * expected).sum(1) / norms
            assert cosine.min() > 0.999, cosine.min()  # so a differently composed batch differs slightly
        else:
            np.testing.assert_allclose(embedding, expected, atol=1e-5, rtol=0)


def test_existing_repo_needs_force_and_force_replaces_it(exports, tmp_path):
    repo = tmp_path / "repo"
    (repo / "old_model").mkdir(parents=True)
    (repo / "old_model" / "config.pbtxt").write_text('name: "old_model"\n')
    with pytest.raises(UsageError, match="--force"):
        write_triton_repo(exports["plain"], repo)
    assert [p.name for p in repo.iterdir()] == ["old_model"]
    write_triton_repo(exports["plain"], repo, force=True)
    assert sorted(p.name for p in repo.iterdir()) == ["bert-mean", "bert-mean_onnx", "bert-mean_tokenizer"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    (tmp_path / "file").write_text("x")
    (tmp_path / "other" / "data").mkdir(parents=True)
    for path in (tmp_path / "file", tmp_path / "other"):  # not a model repository: refused even with force
        with pytest.raises(UsageError):
            write_triton_repo(exports["plain"], path, force=True)
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "other" / "data").is_dir()
    (tmp_path / "empty").mkdir()
    write_triton_repo(exports["plain"], tmp_path / "empty")  # an empty directory is taken
    assert (tmp_path / "empty" / "bert-mean" / "config.pbtxt").is_file()


def test_a_failure_leaves_nothing_behind_and_the_old_repo_untouched(exports, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(deploy, "ensemble_config", broken)  # the last model written
    with pytest.raises(RuntimeError, match="simulated"):
        write_triton_repo(exports["plain"], tmp_path / "new" / "deeper" / "repo")
    assert list(tmp_path.iterdir()) == []  # neither the repo, nor temporary dirs, nor the parents made for it

    old = tmp_path / "repo"
    (old / "m").mkdir(parents=True)
    (old / "m" / "config.pbtxt").write_text("keep")
    with pytest.raises(RuntimeError, match="simulated"):
        write_triton_repo(exports["plain"], old, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["repo"] and (old / "m" / "config.pbtxt").read_text() == "keep"


def test_bad_arguments_and_exports_are_refused(exports, tmp_path):
    with pytest.raises(BrokenExportError):
        write_triton_repo(tmp_path / "missing", tmp_path / "r")
    (tmp_path / "not-an-export").mkdir()
    with pytest.raises(BrokenExportError):
        write_triton_repo(tmp_path / "not-an-export", tmp_path / "r")
    for kwargs in ({"max_batch_size": 0}, {"kind": "tpu"}, {"name": "has space"}):
        with pytest.raises(UsageError):
            write_triton_repo(exports["plain"], tmp_path / "r", **kwargs)
    with pytest.raises(UsageError, match="overlaps"):
        write_triton_repo(exports["plain"], exports["plain"] / "repo")
    assert not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="batch dimension"):  # hidden_states put the layers first
        deploy.tensor_config(TensorSpec("hidden_states", "float32", (5, BATCH, SEQUENCE, 32)))
    assert deploy.model_name(Path("/x/my.model v2"), None) == "my_model_v2"


def test_pbtxt_writer_matches_protobufs_own_text_format():
    config = {
        "name": 'a "quoted" name', "max_batch_size": 4,
        "input": [{"name": "x", "data_type": deploy.Enum("TYPE_FP32"), "dims": [-1, 3]}],
        "dynamic_batching": {}, "parameters": [{"key": "k", "value": {"string_value": "v\\w"}}],
    }
    parsed = text_format.Parse(deploy.to_pbtxt(config), ModelConfig())
    as_json = {**config, "input": [{**config["input"][0], "data_type": "TYPE_FP32"}],
               "parameters": {"k": {"string_value": "v\\w"}}}
    expected = json_format.ParseDict(as_json, ModelConfig())
    assert parsed == expected and parsed.HasField("dynamic_batching")


def test_cli_writes_the_repo_and_refuses_an_existing_one_in_one_line(exports, tiny_models, tmp_path):
    """The command in the test process (Typer's runner: the same parsing, library calls and error mapping as the
    installed script, which tests/test_cli.py runs as a subprocess)."""
    from typer.testing import CliRunner

    from poolx.cli import app

    def poolx(*args: str) -> types.SimpleNamespace:
        result = CliRunner().invoke(app, list(args))
        return types.SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)

    repo = tmp_path / "repo"
    result = poolx("triton", str(exports["plain"]), str(repo), "--name", "minilm")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["minilm", "minilm_onnx", "minilm_tokenizer"]
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*")}
    result = poolx("triton", str(exports["plain"]), str(repo))
    assert result.returncode == 2 and "--force" in result.stderr and "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*")} == before  # untouched
    out = tmp_path / "export"  # export --triton refuses the existing repo before exporting anything
    result = poolx("export", str(tiny_models["bert"]), "-o", str(out), "--pooling", "mean", "--triton", str(repo))
    assert result.returncode == 2 and "exists" in result.stderr and not out.exists()
    result = poolx("export", str(tiny_models["bert"]), "-o", str(out), "--pooling", "mean", "--max-length", "64",
                   "--triton", str(tmp_path / "fresh"))
    assert result.returncode == 0, result.stderr
    assert parse(tmp_path / "fresh" / "export_onnx" / "config.pbtxt").max_batch_size == 64
