"""`poolx embed --engine ray` against the single-process `poolx embed`, same export, same input, one run.

    python benchmarks/ray.py [--texts 20000] [--configs 2x1,1x2]

Exports the packaged MiniLM with mean pooling, writes --texts texts (with ids) to Parquet, then times, each as the
CLI command a user types (wall clock, imports and for Ray the local cluster's start included):
single-process `poolx embed --threads 2`, and `poolx embed --engine ray --actors A --threads T` for each AxT in
--configs (a fresh local Ray cluster per command). Prints texts/s and the ratio to the single process, and checks
that both wrote the same vectors.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--configs", default="2x1,1x2", help="ACTORSxTHREADS for the Ray runs")
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))
    from serve import corpus

    from poolx.exporter.export import export

    with tempfile.TemporaryDirectory(prefix="poolx-ray-bench-") as tmp:
        root = Path(tmp)
        directory = export(None, root / "mean", pooling="mean").directory
        texts = corpus(args.texts)
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts}), root / "in.parquet")

        def run(*extra: str, out: Path) -> float:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "poolx.cli", "embed", str(directory), "--input",
                            str(root / "in.parquet"), "--output", str(out), "--id-column", "id",
                            "--provider", "cpu", *extra], check=True, capture_output=True)
            return time.perf_counter() - start

        seconds = run("--threads", "2", out=root / "single.parquet")
        single = pq.read_table(root / "single.parquet")
        vectors = np.array(single.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(single), -1)
        reference = dict(zip(single.column("id").to_pylist(), vectors))
        base = len(texts) / seconds
        print(f"single process, 2 threads: {base:6.0f} texts/s ({seconds:.1f} s for {len(texts)} texts)")
        for config in args.configs.split(","):
            actors, threads = config.split("x")
            out = root / f"ray-{config}.parquet"
            seconds = run("--engine", "ray", "--actors", actors, "--threads", threads, out=out)
            table = pq.read_table(out)
            got = np.array(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(table), -1)
            expected = np.stack([reference[i] for i in table.column("id").to_pylist()])
            same = len(table) == len(texts) and np.allclose(got, expected, atol=1e-5)
            rate = len(texts) / seconds
            print(f"ray, {actors} actor(s) x {threads} thread(s): {rate:6.0f} texts/s = {rate / base:.2f}x the single "
                  f"process ({seconds:.1f} s); same vectors: {same}")


if __name__ == "__main__":
    main()
