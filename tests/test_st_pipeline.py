"""sentence-transformers directories export as sentence-transformers runs them: Transformer -> Pooling (its modes)
-> Dense -> Normalize in the one graph, held to `SentenceTransformer(dir).encode` itself (max abs 1e-5), prompts
applied by the Embedder, `poolx embed --prompt` and the server; normalization is a property of the export that
every endpoint agrees with; what poolx cannot export is refused in one line. Directories are built offline from a
tiny BERT with `sentence_transformers.models`."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from poolx.cli import app
from poolx.exporter.export import export
from poolx.manifest import Manifest
from poolx.parity.texts import VERIFY_TEXTS
from poolx.parity.verify import verify
from poolx.runtime.embedder import Embedder

# Imported where used: a module-level import (~3 s) would be paid at collection by every xdist worker.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers is not installed")
TEXTS = ["A man is playing a guitar.", "", "Ein Mann spielt Gitarre.", "x", "word " * 90, "naïve café 你好"]
ST_VS_ONNX = "sentence_embedding vs SentenceTransformer.encode"


def build_st(tmp, backbone, pooling_mode, dense=None, normalize=False, prompts=None, default_prompt=None):
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(7)
    modules = [models.Transformer(str(backbone), max_seq_length=64), models.Pooling(32, pooling_mode=pooling_mode)]
    if dense:
        modules.append(models.Dense(*dense[:2], activation_function=dense[2], **(dense[3] if len(dense) > 3 else {})))
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt, device="cpu").save(str(tmp))
    return tmp


def encode(directory, texts, **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(directory), device="cpu").encode(list(texts), convert_to_numpy=True, **kwargs)


@pytest.fixture(scope="module")
def st_dir(tiny_models, tmp_path_factory):
    """CLS + mean pooling -> Dense(64 -> 16, tanh) -> Normalize, with prompts (default "query")."""
    import torch

    return build_st(tmp_path_factory.mktemp("st") / "model", tiny_models["bert"], ("cls", "mean"),
                    dense=(64, 16, torch.nn.Tanh()), normalize=True,
                    prompts={"query": "query: ", "document": "passage: "}, default_prompt="query")


@pytest.fixture(scope="module")
def st_export(st_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("st-export") / "e"
    export(str(st_dir), out)
    return out


def test_the_pipeline_is_in_the_graph_and_verify_holds_it_to_sentence_transformers(st_dir, st_export):
    m = Manifest.read(st_export)
    assert m.pooling["name"] == "st" and m.pooling["options"] == {"modes": ["cls", "mean"]}
    assert m.pooling["dense"] == [{"in_features": 64, "out_features": 16, "bias": True, "activation": "Tanh",
                                   "residual": False}]
    assert m.pooling["normalize"] is True and m.pooling["output_dim"] == 16 and m.io.outputs[0].shape[1] == 16
    assert "pooler.safetensors" in m.files  # the Dense weights are checksummed with the export
    assert "2_Dense/model.safetensors" in m.source["weights_sha256"]
    assert m.source["sentence_transformers"]["pipeline"] == (
        "Transformer -> Pooling(cls+mean) -> Dense(64->16, Tanh) -> Normalize")
    assert m.prompts == {"query": "query: ", "document": "passage: "} and m.prompt() == "query: "
    report = verify(st_export)
    library = {o.name: o for o in report.outputs}[ST_VS_ONNX]
    assert report.passed and library.max_abs <= 1e-5 and library.cases == 1


def test_embedder_applies_the_prompts_as_sentence_transformers_does(st_dir, st_export):
    embedder = Embedder(st_export, "cpu")
    got = embedder.embed(TEXTS)
    np.testing.assert_allclose(got, encode(st_dir, TEXTS), atol=1e-5)  # both with the default prompt, "query: "
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(TEXTS, prompt_name="document"),
                               encode(st_dir, TEXTS, prompt_name="document"), atol=1e-5)
    assert not np.allclose(got, embedder.embed(TEXTS, prompt_name="document"), atol=1e-3)
    with pytest.raises(Exception, match="unknown prompt 'nope'; this export's prompts: document, query"):
        embedder.embed(TEXTS, prompt_name="nope")


def test_embed_command_takes_a_prompt_and_refuses_an_unknown_one(st_dir, st_export, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS[:4]) + "\n")
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(app, ["embed", str(st_export), "-i", str(src), "-o", str(out), "--prompt", "document",
                                      "--provider", "cpu"])
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(np.load(out), encode(st_dir, TEXTS[:4], prompt_name="document"), atol=1e-5)
    result = CliRunner().invoke(app, ["embed", str(st_export), "hello", "--prompt", "nope"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: unknown prompt 'nope'; this export's prompts: document, query")


def test_endpoints_agree_with_a_normalizing_export(st_export):
    from fastapi.testclient import TestClient

    from poolx.serve.app import create_app

    embedder = Embedder(st_export, "cpu")
    expected = embedder.embed(TEXTS[:3])
    with TestClient(create_app(embedder)) as client:
        openai = client.post("/v1/embeddings", json={"input": TEXTS[:3]}).json()
        tei = client.post("/embed", json={"inputs": TEXTS[:3]}).json()
        also = client.post("/embed", json={"inputs": TEXTS[:3], "normalize": True}).json()
        np.testing.assert_allclose([d["embedding"] for d in openai["data"]], expected, atol=1e-6)
        np.testing.assert_allclose(tei, expected, atol=1e-6)
        np.testing.assert_allclose(also, expected, atol=1e-6)
        refused = client.post("/embed", json={"inputs": "x", "normalize": False})
        assert refused.status_code == 400 and "normalizes" in refused.json()["error"]
        doc = client.post("/embed", json={"inputs": TEXTS[:3], "prompt_name": "document"}).json()
        np.testing.assert_allclose(doc, embedder.embed(TEXTS[:3], prompt_name="document"), atol=1e-6)
        info = client.get("/info").json()
        assert info["normalized"] is True and info["default_prompt_name"] == "query"


def test_every_pooling_mode_and_a_residual_gelu_dense_match_sentence_transformers(tiny_models, tmp_path):
    import torch

    modes = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
    directory = build_st(tmp_path / "m", tiny_models["bert"], modes, dense=(192, 24, torch.nn.GELU(), {"use_residual": True}))
    export(str(directory), tmp_path / "e")
    report = verify(tmp_path / "e", texts=VERIFY_TEXTS[:12])
    assert report.passed and {o.name for o in report.outputs} == {"sentence_embedding", ST_VS_ONNX}
    np.testing.assert_allclose(Embedder(tmp_path / "e", "cpu").embed(TEXTS), encode(directory, TEXTS), atol=1e-5)


def test_replacing_the_pooling_step_is_said_and_verified_against_the_rebuild(st_dir, tmp_path):
    result = CliRunner().invoke(app, ["export", str(st_dir), "-o", str(tmp_path / "e"), "-p", "mean-max"])
    assert result.exit_code == 0, result.stderr
    assert "note: --pooling mean-max replaces the directory's sentence-transformers Pooling (cls+mean)" in result.stderr
    m = Manifest.read(tmp_path / "e")
    assert m.source["sentence_transformers"]["pooling_replaced"] and m.pooling["normalize"] and m.pooling["dense"]
    report = verify(tmp_path / "e", texts=VERIFY_TEXTS[:6])
    assert report.passed and [o.name for o in report.outputs] == ["sentence_embedding"]
    assert any("replaced" in n and "eager rebuild only" in n for n in report.notes)
    wrong = CliRunner().invoke(app, ["export", str(st_dir), "-o", str(tmp_path / "f"), "-p", "mean"])
    assert wrong.exit_code == 2 and not (tmp_path / "f").exists()
    assert "Dense step takes 64 features but the 'mean' pooler gives 32" in wrong.stderr


@pytest.mark.parametrize("edit,needle", [
    (lambda d: _module(d, "sentence_transformers.models.LayerNorm", "3_LayerNorm"),
     "module 'sentence_transformers.models.LayerNorm' (3_LayerNorm), which poolx cannot export"),
    (lambda d: _module(d, "my_package.MyPooling", "3_Mine"), "module 'my_package.MyPooling' (3_Mine)"),
    (lambda d: _pooling(d, include_prompt=False), "include_prompt false"),
    (lambda d: _pooling(d, pooling_mode=["cls", "median"]), "pooling modes ['cls', 'median'] are not"),
], ids=["layernorm", "custom-module", "prompt-excluded", "unknown-mode"])
def test_what_poolx_cannot_export_is_refused_in_one_line(st_dir, tmp_path, edit, needle):
    directory = tmp_path / "m"
    shutil.copytree(st_dir, directory)
    edit(directory)
    result = CliRunner().invoke(app, ["export", str(directory), "-o", str(tmp_path / "e")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "e").exists()


def _module(directory, kind, path):
    modules = json.loads((directory / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": path, "type": kind})
    (directory / "modules.json").write_text(json.dumps(modules))


def _pooling(directory, **changes):
    config = json.loads((directory / "1_Pooling" / "config.json").read_text())
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({**config, **changes}))


def test_normalize_flag_puts_unit_vectors_in_any_export(tiny_models, tmp_path):
    result = CliRunner().invoke(app, ["export", str(tiny_models["bert"]), "-o", str(tmp_path / "e"), "-p", "cls",
                                      "--normalize", "--max-length", "64"])
    assert result.exit_code == 0, result.stderr
    assert Manifest.read(tmp_path / "e").normalizes and verify(tmp_path / "e", texts=VERIFY_TEXTS[:6]).passed
    vectors = Embedder(tmp_path / "e", "cpu").embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_triton_tokenizer_prepends_the_default_prompt(st_export, tmp_path):
    from poolx.deploy.triton import write_triton_repo
    from poolx.deploy.triton_tokenizer import encode as triton_encode
    from poolx.deploy.triton_tokenizer import load

    write_triton_repo(st_export, tmp_path / "repo", name="st")
    tokenizer, settings = load(tmp_path / "repo" / "st_tokenizer" / "1")
    assert settings["prompt"] == "query: "
    embedder = Embedder(st_export, "cpu")
    ours = triton_encode(tokenizer, TEXTS[:3], **settings)
    ids = [e.ids for e in embedder.encode(TEXTS[:3])]  # the Embedder's tokens, default prompt included
    assert [list(row[: len(i)]) for row, i in zip(ours["input_ids"], ids)] == ids
