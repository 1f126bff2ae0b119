"""A crafted export reads nothing outside its directory (issue 14, item 1): an external-data `location` that leaves
the export (`..`, an absolute path, a link out) or names a file the manifest does not list is refused before any
session opens, with checksums that match (the attacker writes the manifest too), on onnxruntime and OpenVINO."""

from __future__ import annotations

import os
from pathlib import Path
import shutil

import onnx
import pytest
from typer.testing import CliRunner

from poolx.cli import app
from poolx.errors import BrokenExportError
from poolx.exporter.export import export
from poolx.manifest import Manifest, checksum_tree
from poolx.runtime.embedder import Embedder


@pytest.fixture(scope="module")
def external(tiny_models, tmp_path_factory):
    """The tiny BERT exported with its weights in model.onnx.data."""
    out = tmp_path_factory.mktemp("external") / "e"
    export(str(tiny_models["bert"]), out, pooling="cls", external_data="always", max_length=32)
    return out


def crafted(external, tmp_path, location: str):
    """A copy of the export whose graph points one weight at `location`, its manifest re-checksummed to match."""
    directory = tmp_path / "crafted"
    shutil.copytree(external, directory)
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(directory / "model.onnx"))
    manifest = Manifest.read(directory)
    manifest.files = checksum_tree(directory)
    manifest.write(directory)
    return directory


@pytest.mark.parametrize("where", ["parent", "absolute", "unlisted"])
def test_external_data_outside_the_export_is_refused(external, tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(1 << 20))
    location = {"parent": "../secret.bin", "absolute": str(secret), "unlisted": "other.bin"}[where]
    directory = crafted(external, tmp_path, location)
    if where == "unlisted":  # inside the directory but not in the manifest: also refused (check_files first)
        (directory / "other.bin").write_bytes(secret.read_bytes())
    for provider in ("cpu", "openvino"):
        with pytest.raises(BrokenExportError, match="external data|does not list"):
            Embedder(directory, provider)
    result = CliRunner().invoke(app, ["embed", str(directory), "hello"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_listed_file_that_links_outside_is_refused(external, tmp_path):
    directory = tmp_path / "linked"
    shutil.copytree(external, directory)
    outside = tmp_path / "weights-elsewhere.bin"
    shutil.move(directory / "model.onnx.data", outside)
    (directory / "model.onnx.data").symlink_to(outside)  # same bytes, same checksum
    with pytest.raises(BrokenExportError, match="links outside"):
        Embedder(directory, "cpu")


def test_the_genuine_external_data_export_still_loads(external):
    assert Embedder(external, "cpu").embed(["hello"]).shape == (1, 32)


def _copy_with(source, tmp_path, name, edit=None, files=None):
    """A copy of the export `source` with `files` replaced and the manifest edited, checksums recomputed (so only
    the content is at fault, not the checksums)."""
    import json

    target = tmp_path / name
    shutil.copytree(source, target)
    for file, content in (files or {}).items():
        (target / file).write_bytes(content)
    manifest = json.loads((target / "manifest.json").read_text())
    (edit or (lambda m: None))(manifest)
    manifest["files"] = checksum_tree(target)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_a_manifest_without_the_output_width_is_a_broken_export_not_an_internal_error(bert_mean, tmp_path):
    """`pooling.output_dim` removed: `poolx embed` said "internal error (a bug in poolx)", exit 3; verify passed."""
    broken = _copy_with(bert_mean, tmp_path, "no-width", edit=lambda m: m["pooling"].pop("output_dim"))
    for args in (["embed", str(broken), "hi", "--provider", "cpu"], ["verify", str(broken)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "output_dim" in result.output and "internal error" not in result.output


def test_openvino_on_a_graph_that_is_not_onnx_is_one_line(bert_mean, tmp_path):
    """OpenVINO tried its other frontends on an unreadable model.onnx (TensorFlow's logs on stderr) and the error's
    first line was "Exception from src/inference/src/cpp/core.cpp:132:"."""
    pytest.importorskip("openvino")
    broken = _copy_with(bert_mean, tmp_path, "garbage", files={"model.onnx": b"garbage"})
    with pytest.raises(BrokenExportError, match="model.onnx is not a readable ONNX file"):
        Embedder(broken, "openvino")


def test_a_tokenizer_that_panics_is_one_line_exit_2_not_a_traceback(bert_mean, tmp_path):
    """An edited tokenizer.json whose pre-tokenizer regex backtracks past Oniguruma's limit panics in Rust
    (pyo3's PanicException, a BaseException): `poolx embed` printed a Python traceback, exit 1."""
    import json

    pipeline = json.loads((bert_mean / "tokenizer.json").read_text())
    pipeline["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}
    broken = _copy_with(bert_mean, tmp_path, "regex", files={"tokenizer.json": json.dumps(pipeline).encode()})
    result = CliRunner().invoke(app, ["embed", str(broken), "a" * 40 + "b", "--provider", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "tokenizer.json failed on a text (Onig: Regex search error" in result.output


def test_the_onnxruntime_floor_refuses_external_data_outside_the_directory_on_its_own(tmp_path):
    """Issue 14: besides poolx's own check, every onnxruntime poolx allows refuses a graph whose external data lies
    outside its directory (1.23.2 read "../secret.bin" and an absolute path; 1.24.1 refuses both)."""
    import tomllib

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.24.1"] and extras["gpu"] == ["onnxruntime-gpu>=1.24.1"]
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "export").mkdir()
    for location in ("../secret.bin", str(tmp_path / "secret.bin")):
        weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "16")):
            weight.external_data.add(key=key, value=value)
        graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        (tmp_path / "export" / "model.onnx").write_bytes(model.SerializeToString())
        with pytest.raises(Exception, match="(?i)external data|absolute path"):
            ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
