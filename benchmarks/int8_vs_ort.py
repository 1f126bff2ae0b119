"""poolx's int8 MiniLM graph against onnxruntime's default dynamic quantization of poolx's fp32 graph: speed (each
graph in its own process, same threads, alternating rounds, graph only on random ids) and accuracy (min cosine
against eager fp32's graph on poolx's verify texts).

    python benchmarks/int8_vs_ort.py [--threads 2] [--rounds 3] [--seconds 4]

onnxruntime's default: `quantize_dynamic(model.onnx, out, weight_type=QInt8)` (per-tensor weights, every MatMul and
Gemm, the pooler and head included), as a user would run it; and with the two options onnxruntime's documentation
suggests for accuracy on CPUs without VNNI (`per_channel=True, reduce_range=True`: 7-bit weights)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = ((32, 128), (1, 16))


def time_graph(graph: str, batch: int, length: int, threads: int, seconds: float) -> float:
    import time

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    names = [i.name for i in session.get_inputs()]
    feeds = {"input_ids": rng.integers(1000, 20000, (batch, length)).astype(np.int64),
             "attention_mask": np.ones((batch, length), np.int64), "token_type_ids": np.zeros((batch, length), np.int64)}
    feeds = {n: feeds[n] for n in names}
    for _ in range(3):
        session.run(None, feeds)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        session.run(["sentence_embedding"], feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def min_cosine(graph: str, reference: str, directory: Path) -> float:
    import numpy as np
    import onnxruntime as ort

    from poolx.manifest import Manifest
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.runtime.tokenizer import TextEncoder

    encoder = TextEncoder(directory, Manifest.read(directory))
    worst = 1.0
    runs = [ort.InferenceSession(g, providers=["CPUExecutionProvider"]) for g in (graph, reference)]
    for k in range(0, len(VERIFY_TEXTS), 8):
        feeds = encoder(list(VERIFY_TEXTS[k:k + 8]))
        got, ref = (s.run(["sentence_embedding"], {i.name: feeds[i.name] for i in s.get_inputs()})[0] for s in runs)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        worst = min(worst, float(cos.min()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        graph, batch, length = args.worker
        print(json.dumps(time_graph(graph, int(batch), int(length), args.threads, args.seconds)))
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from poolx.exporter.export import export

    root = Path(tempfile.mkdtemp())
    export(None, root / "fp32", pooling="mean")
    export(None, root / "int8", pooling="mean", precision="int8")
    quantize_dynamic(str(root / "fp32" / "model.onnx"), str(root / "ort-int8.onnx"), weight_type=QuantType.QInt8)
    quantize_dynamic(str(root / "fp32" / "model.onnx"), str(root / "ort-int8-pc.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True)
    graphs = {"poolx fp32": str(root / "fp32" / "model.onnx"), "poolx int8": str(root / "int8" / "model.onnx"),
              "onnxruntime quantize_dynamic default": str(root / "ort-int8.onnx"),
              "onnxruntime quantize_dynamic per_channel reduce_range": str(root / "ort-int8-pc.onnx")}
    times: dict[tuple[str, tuple[int, int]], list[float]] = {}
    for _ in range(args.rounds):
        for shape in SHAPES:
            for name, graph in graphs.items():
                done = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--seconds",
                                       str(args.seconds), "--worker", graph, *map(str, shape)],
                                      capture_output=True, text=True, check=True)
                times.setdefault((name, shape), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"threads {args.threads}, {args.rounds} alternating rounds, each graph in its own process; median ms")
    print("| graph | " + " | ".join(f"{b} x {n} ms" for b, n in SHAPES) + " | min cosine vs fp32 graph (verify texts) |")
    print("|---|" + "---|" * (len(SHAPES) + 1))
    for name, graph in graphs.items():
        cells = [f"{statistics.median(times[(name, shape)]):.1f}" for shape in SHAPES]
        print(f"| {name} | " + " | ".join(cells) + f" | {min_cosine(graph, graphs['poolx fp32'], root / 'fp32'):.5f} |")
    from poolx.manifest import Manifest

    q = Manifest.read(root / "int8").graph["quantization"]
    print(f"poolx int8: {q['weights']} weights, alpha {q['alpha']}, {q['quantized_matmuls']} int8 MatMuls, "
          f"{len(q['kept_fp32'])} kept fp32, calibration min cosine {q['calibration_min_cosine']}")


if __name__ == "__main__":
    main()
