"""OpenVINO vs onnxruntime on poolx's plain MiniLM graph, and sentence-transformers fp32 (torch) as the baseline:
each candidate in its own process, the same thread count, alternating rounds, medians.

    python benchmarks/openvino_cpu.py [--threads 2] [--rounds 3] [--seconds 5]

Exports the packaged all-MiniLM-L6-v2 (its sentence-transformers pipeline, plain fp32) to a temporary directory,
then times one model run on random token ids at 32 x 128 and 1 x 16 (graph only: no tokenization; torch runs
`SentenceTransformer`'s modules on the same ids). Prints one table; ratios are against sentence-transformers fp32
in the same run. The OpenVINO rows say the precision its CPU plugin compiled (bf16 only on CPUs that have it);
the last runs the int8 graph built for OpenVINO (`--precision int8 --target openvino`, NNCF's)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CANDIDATES = ("sentence-transformers fp32", "poolx onnxruntime cpu", "poolx openvino", "poolx int8 for openvino")
SHAPES = ((32, 128), (1, 16))


def worker(candidate: str, directory: str, batch: int, length: int, threads: int, seconds: float) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (batch, length)).astype(np.int64),
             "attention_mask": np.ones((batch, length), np.int64), "token_type_ids": np.zeros((batch, length), np.int64)}
    precision = None
    if candidate == "sentence-transformers fp32":
        import torch
        from sentence_transformers import SentenceTransformer

        from poolx.models.loading import resolve_source

        torch.set_num_threads(threads)
        model = SentenceTransformer(str(resolve_source(None).path), device="cpu").eval()
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def run() -> None:
            with torch.inference_mode():
                model(dict(tensors))
    else:
        from poolx.providers import get_provider
        from poolx.runtime.session import create_session

        provider = get_provider("openvino" if "openvino" in candidate else "cpu")
        graph = Path(directory).with_name("int8-openvino") if "int8" in candidate else Path(directory)
        session = create_session(graph / "model.onnx", provider, threads)
        precision = getattr(session, "precision", "fp32")

        def run() -> None:
            session.run(["sentence_embedding"], feeds)
    for _ in range(3):
        run()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1000, "runs": len(times), "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--worker", nargs=4, metavar=("CANDIDATE", "DIR", "BATCH", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        candidate, directory, batch, length = args.worker
        print(json.dumps(worker(candidate, directory, int(batch), int(length), args.threads, args.seconds)))
        return
    from poolx.exporter.export import export

    directory = Path(tempfile.mkdtemp()) / "minilm"
    export(None, directory)
    export(None, directory.with_name("int8-openvino"), precision="int8", target="openvino")
    results: dict[tuple[str, tuple[int, int]], list[float]] = {}
    precisions: dict[str, str] = {}
    for _ in range(args.rounds):
        for shape in SHAPES:
            for candidate in CANDIDATES:
                done = subprocess.run(
                    [sys.executable, __file__, "--threads", str(args.threads), "--seconds", str(args.seconds),
                     "--worker", candidate, str(directory), str(shape[0]), str(shape[1])],
                    capture_output=True, text=True, check=True,
                )
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault((candidate, shape), []).append(row["median_ms"])
                precisions[candidate] = row["precision"] or "fp32"
    print(f"threads {args.threads}, {args.rounds} alternating rounds, each candidate in its own process; median ms")
    print("| candidate | precision | " + " | ".join(f"{b} x {n} ms (ratio)" for b, n in SHAPES) + " |")
    print("|---|---|" + "---|" * len(SHAPES))
    for candidate in CANDIDATES:
        cells = []
        for shape in SHAPES:
            ms = statistics.median(results[(candidate, shape)])
            base = statistics.median(results[(CANDIDATES[0], shape)])
            cells.append(f"{ms:.1f} ({base / ms:.2f}x)")
        print(f"| {candidate} | {precisions[candidate]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
