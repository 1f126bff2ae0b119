"""The Embedder, `poolx embed --input/--output` and `poolx bench`, on real exports and the real onnxruntime."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from poolx.cli import app
from poolx.errors import ProviderUnavailableError, UsageError
from poolx.exporter.export import export
from poolx.parity.texts import VERIFY_TEXTS
from poolx.providers import CPU, CUDA, OPENVINO, TENSORRT, openvino_preferred
from poolx.runtime.embedder import Embedder
from poolx.runtime.session import create_session, run_bound
from poolx.variants import INT8, Variant
from test_corpus import read_embeddings


@pytest.fixture(scope="module")
def exported(bert_mean):
    return bert_mean


def one_by_one(directory, texts):
    embedder = Embedder(directory, "cpu")
    session = create_session(directory / "model.onnx")
    return np.concatenate([session.run(["sentence_embedding"], embedder.text_encoder([t]))[0] for t in texts])


def test_embed_matches_the_graph_text_by_text_in_the_callers_order(exported):
    texts = list(VERIFY_TEXTS) * 3
    expected = one_by_one(exported, texts)
    # no CUDA here: auto says what it chose, OpenVINO where it is installed and the CPU has bf16, else the CPU
    assert Embedder(exported, "auto").provider is (OPENVINO if openvino_preferred() else CPU)
    embedder = Embedder(exported, "cpu")
    for batch_size in (1, 4, 32):
        got = embedder.embed(texts, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == (len(texts), embedder.width)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    normalized = embedder.embed(texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.width)


def test_batches_are_length_sorted_and_within_the_token_budget(exported):
    embedder = Embedder(exported, "cpu", max_tokens=100)
    lengths = [5, 60, 7, 30, 30, 2, 64, 11]
    plan = embedder.plan(lengths, batch_size=3)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in plan for i in b]
    assert flat == sorted(flat, reverse=True)
    assert all(len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1 for b in plan)


def test_a_batch_ends_where_padding_would_cost_more_than_a_run(exported):
    embedder = Embedder(exported, "cpu")
    lengths = [200] + [20] * 10 + [18] * 10
    plan = embedder.plan(lengths, batch_size=64)
    assert plan[0] == [0]  # ten texts padded 180 tokens each would cost far more than one more run
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert len(plan) == 2  # 20 vs 18 tokens: 2 tokens × 10 texts is cheaper than a run, so they stay together
    few = [200] + [20] * 10  # 10 texts × 180 tokens of padding: another run on the CPU, not on a GPU
    assert len(embedder.plan(few, batch_size=64)) == 2
    embedder.provider = CUDA  # a small GPU run is launch-bound, worth thousands of tokens
    assert len(embedder.plan(few, batch_size=64)) == 1


def test_truncation_is_counted_and_said_once(exported):
    embedder = Embedder(exported, "cpu")
    long = VERIFY_TEXTS[-1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedder.embed([long, "short", long])
        embedder.embed([long])
    assert embedder.truncated == 3
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1


def test_providers_that_cannot_run_are_errors_not_a_cpu_run(exported, tiny_models, tmp_path):
    for provider in ("cuda", "tensorrt"):
        with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
            Embedder(exported, provider)
    with pytest.raises(UsageError, match="unknown provider"):
        Embedder(exported, "gpu")
    int8 = Variant(INT8, False, CPU)
    with pytest.raises(ProviderUnavailableError, match="int8 graph runs on the CPU only"):
        int8.choose("cuda")
    assert int8.choose("auto", gpu=True) is CPU and Variant().choose("auto", gpu=True) is CUDA
    with pytest.raises(UsageError, match="TensorRT takes the plain fp32 export"):
        Variant(INT8, True, CPU).choose("tensorrt")


def test_io_binding_path_gives_the_same_numbers(exported):
    embedder = Embedder(exported, "cpu")
    feeds = embedder.text_encoder(list(VERIFY_TEXTS[:6]))
    plain = embedder.session.run(["sentence_embedding"], feeds)[0]
    np.testing.assert_array_equal(run_bound(embedder.session, feeds, "sentence_embedding", "cpu"), plain)


def test_tensorrt_options_follow_the_manifest(exported, tmp_path):
    from poolx.manifest import Manifest

    manifest = Manifest.read(exported)
    options = TENSORRT.options(
        input_names=manifest.io.input_names, max_length=manifest.max_length, cache=tmp_path / "cache", fp16=True,
    )
    assert options["CUDAExecutionProvider"] == {"device_id": "0"}  # the nodes TensorRT does not take
    opts = options["TensorrtExecutionProvider"]
    assert opts["trt_fp16_enable"] == "True" and opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert opts["trt_profile_opt_shapes"].startswith("input_ids:32x64,")  # clipped to max_length 64
    assert opts["trt_profile_max_shapes"] == "input_ids:256x64,attention_mask:256x64,token_type_ids:256x64"


def test_embed_file_to_npy_parquet_and_jsonl(exported, tmp_path):
    texts = [t.replace("\n", " ") for t in VERIFY_TEXTS]
    expected = one_by_one(exported, texts)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "body": t}) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(exported), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "v.npy"),
                                 "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output  # said once
    ids, vectors = read_embeddings(tmp_path / "v.npy")
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    for suffix in ("parquet", "jsonl"):
        out = tmp_path / f"v.{suffix}"
        result = runner.invoke(app, ["embed", str(exported), "-i", str(tmp_path / "in.jsonl"), "-o", str(out),
                                     "--column", "body", "--id-column", "id", "--batch-size", "5", "--provider", "cpu"])
        assert result.exit_code == 0, result.output
        ids, vectors = read_embeddings(out)
        assert ids == [f"doc-{i}" for i in range(len(texts))]
        np.testing.assert_allclose(vectors, expected, atol=1e-5)


@pytest.mark.parametrize("content,args,message", [
    (b"", [], "has no texts"),
    (b"fine\n\xff\xfe bad\n", [], "not UTF-8"),
    (b'{"text": "x"}\n', ["--column", "body"], "no field 'body'"),
])
def test_embed_file_bad_input_is_one_line_and_no_output(exported, tmp_path, content, args, message):
    src = tmp_path / ("in.jsonl" if b"{" in content else "in.txt")
    src.write_bytes(content)
    result = CliRunner().invoke(app, ["embed", str(exported), "-i", str(src), "-o", str(tmp_path / "o.npy"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [src]


def test_embed_refuses_existing_output_and_half_given_options(exported, tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    (tmp_path / "o.npy").write_bytes(b"keep")
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(exported), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "o.npy").read_bytes() == b"keep"
    assert runner.invoke(app, ["embed", str(exported), "-i", str(tmp_path / "in.txt")]).exit_code == 2
    assert runner.invoke(app, ["embed", str(exported)]).exit_code == 2
    result = runner.invoke(app, ["embed", str(exported), "x", "--provider", "cuda"])
    assert result.exit_code == 2 and "CUDAExecutionProvider" in result.output


def test_bench_times_every_candidate_in_its_own_process_and_reuses_the_variants(tiny_models, tmp_path, monkeypatch):
    """Each candidate in a fresh process (each reports its own pid, none the caller's) with the same threads (the
    table and bench.json say so); the variants are exported from the export's own weights (an attention pooler
    initialised with another seed: the fp32 variants match eager fp32 to 1e-5), kept in --reuse and taken by the
    next run, not exported again; the plain graph also on OpenVINO when it is installed."""
    import importlib.util
    import os

    import poolx.bench as bench

    exported = tmp_path / "attn"
    export(str(tiny_models["bert"]), exported, pooling="attention", seed=7)
    pids = []
    run = bench._in_own_process
    monkeypatch.setattr(bench, "_in_own_process", lambda *a: _record(run, pids, *a))
    args = ["bench", str(exported), "--batch-sizes", "2", "--lengths", "8", "--seconds", "0.05", "--threads", "1",
            "--reuse", str(tmp_path / "variants"), "--corpus", "40"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "each candidate in its own process, 1 CPU threads" in result.stdout
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    names = [(c["candidate"], c["device"].split(" ")[0]) for c in data["cells"] if not c["texts"]]
    openvino = [("poolx fp32", "openvino"), ("poolx int8", "openvino")] if importlib.util.find_spec("openvino") else []
    assert names == [("eager fp32", "cpu"), ("poolx fp32", "cpu"), ("poolx fp32-optimized", "cpu"), ("poolx int8", "cpu"), *openvino]
    corpus = [c for c in data["cells"] if c["texts"]]  # the real-text workload: 40 texts of the packaged corpus
    assert [(c["candidate"], c["device"].split(" ")[0]) for c in corpus] == names
    assert all(c["texts"] == 40 and c["texts_per_s"] > 0 and c["length"] == 0 for c in corpus)
    assert "corpus" in result.stdout
    assert data["machine"]["processes"] == "one per candidate" and data["baseline"] == "eager fp32"
    for cell in data["cells"]:
        assert cell["tokens_per_s"] > 0 and cell["p50_ms"] <= cell["p99_ms"] and cell["speedup"] > 0
        exact = "int8" not in cell["candidate"] and "bf16" not in cell["device"]  # OpenVINO computes bf16 where the CPU has it
        bound = 0.99 if "int8" in cell["candidate"] else 0.999 if not exact else 0.99999
        assert cell["min_cosine"] > bound and cell["threads"] == 1
        assert not exact or cell["max_abs"] < 1e-5
    assert (tmp_path / "b" / "bench.png").stat().st_size > 1000
    assert len(pids) == len(set(pids)) == len(names) and os.getpid() not in pids
    made = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "variants").rglob("model.onnx")}
    assert len(made) == 3 + bool(openvino)  # OpenVINO runs the CPU's plain graph and its own int8 graph
    def timed_elsewhere(candidate, spec, work):  # the second run is about the exports: no candidate is timed
        work.mkdir(parents=True, exist_ok=True)
        for key, texts in spec["texts"].items():
            np.save(work / f"{key}.npy", np.ones((len(texts), 32), np.float32))
        return {"times": {key: [0.001] for key in spec["texts"]}, "pid": -1}

    monkeypatch.setattr(bench, "_in_own_process", timed_elsewhere)
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "c")])
    assert again.exit_code == 0, again.output
    assert again.stderr.count("reusing the") == len(made) and "exporting the" not in again.stderr
    assert {str(p): p.stat().st_mtime_ns for p in (tmp_path / "variants").rglob("model.onnx")} == made


def test_the_packaged_corpus_is_10000_distinct_real_texts_of_5_to_300_tokens():
    from poolx.bench import corpus_texts
    from poolx.models.loading import load_tokenizer, resolve_source

    texts = corpus_texts(10_000)
    assert len(texts) == len(set(texts)) == 10_000 and corpus_texts(3) == texts[:3]
    lengths = [len(ids) for ids in load_tokenizer(resolve_source(None))(texts)["input_ids"]]
    assert min(lengths) >= 5 and max(lengths) <= 300
    assert 30 < sorted(lengths)[5000] < 80  # a natural mix: median ~44 tokens, a quarter over ~140


def _record(run, pids, *args):
    result = run(*args)
    pids.append(result["pid"])
    return result


@pytest.mark.parametrize("args,message", [
    (["--provider", "cuda"], "CUDAExecutionProvider"),
    (["--batch-sizes", "0"], "at least 1"),
    (["--lengths", "1000"], "beyond this export's max_length"),
    (["--lengths", "a,b"], "comma-separated integers"),
    (["--corpus", "20000"], "0..10000 texts of the packaged corpus"),
    (["--corpus", "no-such-file.txt"], "cannot read it"),
])
def test_bench_bad_usage_is_one_line(exported, tmp_path, args, message):
    result = CliRunner().invoke(app, ["bench", str(exported), "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_tensorrt_takes_only_the_plain_graph_and_ids_need_a_table_output(tiny_models, exported, tmp_path):
    export(str(tiny_models["bert"]), tmp_path / "opt", pooling="mean", optimize=True)
    with pytest.raises(UsageError, match="TensorRT takes the plain fp32 export"):
        Embedder(tmp_path / "opt", "tensorrt")
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "a"}\n')
    result = CliRunner().invoke(app, ["embed", str(exported), "-i", str(tmp_path / "in.jsonl"),
                                      "-o", str(tmp_path / "o.npy"), "--id-column", "id"])
    assert result.exit_code == 2 and "--id-column needs" in result.output
