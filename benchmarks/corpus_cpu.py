"""Issue 13's corpus target: the packaged corpus of 10,000 real texts (`src/poolx/data/corpus.txt.gz`, 5-300 tokens,
built by benchmarks/corpus/make_corpus.py) embedded end to end (tokenization included) by sentence-transformers,
by OpenVINO used by hand on poolx's graph, and by poolx's variants, each candidate in its own process with the same
thread count, alternating rounds, medians; texts/s and the ratio against sentence-transformers fp32 in the same run.

    python benchmarks/corpus_cpu.py [--texts 10000] [--threads 2] [--rounds 3]

"By hand" is what a user writes from OpenVINO's documentation: `compile_model(model.onnx, "CPU", hint)`, the
model's Hugging Face tokenizer on batches of 32 texts in file order (padding to the longest of the batch,
truncation at the export's max_length), one `infer` per batch with the latency hint, an `AsyncInferQueue` with the
throughput hint. poolx's candidates are `Embedder.embed(texts)` (length-sorted batches cut where padding costs
more than a run; with `throughput`, OpenVINO's streams run batches concurrently), on the plain graph, onnxruntime's
int8 graph and the int8 graph for OpenVINO (`--precision int8 --target openvino`, NNCF's). The min cosine of each
candidate's vectors against sentence-transformers fp32's is printed beside its speed."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 32


def candidates(cpu_bf16: bool) -> list[str]:
    names = ["sentence-transformers fp32"] + (["sentence-transformers bf16"] if cpu_bf16 else [])
    return names + ["openvino by hand, latency", "openvino by hand, throughput", "poolx fp32 (onnxruntime)",
                    "poolx int8 (onnxruntime)", "poolx openvino", "poolx openvino, throughput",
                    "poolx int8 for openvino", "poolx int8 for openvino, throughput"]


def worker(candidate: str, root: Path, count: int, threads: int, out: Path) -> dict:
    import numpy as np

    from poolx.bench import corpus_texts
    from poolx.manifest import Manifest
    from poolx.models.loading import resolve_source

    texts = corpus_texts(count)
    plain = root / "fp32"
    max_length = Manifest.read(plain).max_length
    precision = "fp32"
    if candidate.startswith("sentence-transformers"):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        bf16 = candidate.endswith("bf16")
        model = SentenceTransformer(str(resolve_source(None).path), device="cpu",
                                    model_kwargs={"torch_dtype": torch.bfloat16} if bf16 else None)
        model.max_seq_length = max_length
        precision = "bf16" if bf16 else "fp32"
        run = lambda t: model.encode(t, batch_size=BATCH, convert_to_numpy=True).astype(np.float32)  # noqa: E731
    elif candidate.startswith("openvino by hand"):
        import openvino as ov
        from transformers import AutoTokenizer

        throughput = candidate.endswith("throughput")
        compiled = ov.Core().compile_model(str(plain / "model.onnx"), "CPU", {
            "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY", "INFERENCE_NUM_THREADS": threads})
        precision = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "f32"
        tokenizer = AutoTokenizer.from_pretrained(str(resolve_source(None).path))
        names = {i.get_any_name() for i in compiled.inputs}
        output = compiled.output("sentence_embedding")

        def batches(t):
            for k in range(0, len(t), BATCH):
                enc = tokenizer(t[k:k + BATCH], padding=True, truncation=True, max_length=max_length, return_tensors="np")
                yield k, {n: v for n, v in enc.items() if n in names}

        if throughput:
            def run(t):
                vectors = np.empty((len(t), compiled.output(0).get_partial_shape()[1].get_length()), np.float32)
                jobs = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
                jobs.set_callback(lambda request, k: vectors.__setitem__(
                    slice(k, k + BATCH), request.get_tensor(output).data.copy()))
                for k, feeds in batches(t):
                    jobs.start_async(feeds, k)
                jobs.wait_all()
                return vectors
        else:
            def run(t):
                return np.concatenate([compiled(feeds)[output] for _, feeds in batches(t)])
    else:
        from poolx.runtime.embedder import Embedder

        directory = root / ("int8-openvino" if "int8 for openvino" in candidate else "int8" if "int8" in candidate else "fp32")
        provider = "openvino" if "openvino" in candidate else "cpu"
        embedder = Embedder(directory, provider, threads=threads, throughput=candidate.endswith("throughput"))
        precision = embedder.provider.description
        run = lambda t: embedder.embed(t, batch_size=BATCH)  # noqa: E731
    run(texts[: 2 * BATCH])  # warm-up: compilation, allocations
    start = time.perf_counter()
    vectors = run(texts)
    seconds = time.perf_counter() - start
    np.save(out, vectors)
    return {"texts_per_s": len(texts) / seconds, "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("CANDIDATE", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        candidate, root, out = args.worker
        print(json.dumps(worker(candidate, Path(root), args.texts, args.threads, Path(out))), flush=True)
        # no interpreter teardown: OpenVINO's AsyncInferQueue once aborted there ("Resource deadlock avoided", a
        # thread joining itself) after its result was printed, failing the whole run (2026-12-04)
        os._exit(0)
    import numpy as np

    from poolx.bench import cpu_has_bf16
    from poolx.exporter.export import export
    from poolx.parity.compare import min_cosine

    root = Path(tempfile.mkdtemp(prefix="poolx-corpus-"))
    export(None, root / "fp32")
    export(None, root / "int8", precision="int8")
    export(None, root / "int8-openvino", precision="int8", target="openvino")
    names = candidates(cpu_has_bf16())
    speeds: dict[str, list[float]] = {}
    precision: dict[str, str] = {}
    for _ in range(args.rounds):
        for k, name in enumerate(names):
            done = subprocess.run([sys.executable, __file__, "--texts", str(args.texts), "--threads", str(args.threads),
                                   "--worker", name, str(root), str(root / f"{k}.npy")], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            speeds.setdefault(name, []).append(row["texts_per_s"])
            precision[name] = row["precision"]
    reference = np.load(root / "0.npy")
    base = statistics.median(speeds[names[0]])
    print(f"{args.texts} texts of the packaged corpus, batches of {BATCH}, {args.threads} threads, {args.rounds} "
          "alternating rounds, each candidate in its own process; median texts/s")
    print("| candidate | precision | texts/s | vs sentence-transformers fp32 | min cosine vs it |")
    print("|---|---|---|---|---|")
    for k, name in enumerate(names):
        speed = statistics.median(speeds[name])
        print(f"| {name} | {precision[name]} | {speed:.0f} | {speed / base:.2f}x | "
              f"{min_cosine(np.load(root / f'{k}.npy'), reference):.5f} |")


if __name__ == "__main__":
    main()
