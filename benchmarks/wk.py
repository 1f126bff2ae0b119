"""SBERT-WK speed on the packaged MiniLM: the exported wk graph against the notebook path (eager backbone + the
notebook's loop), the wk pooler alone against the notebook's loop on the same hidden states, and the wk graph
against the mean-pooled graph of the same backbone. All in one run, same inputs, fixed thread count.

    python benchmarks/wk.py [--threads 2] [--batch 16] [--length 128] [--layer-start 4] [--window 2] [--optimize]

Each candidate is timed in its own block after a warm-up. (An earlier version interleaved the candidates; that let
onnxruntime's intra-op threads, which keep spinning after a run, steal the cores from the eager PyTorch runs that
followed them.)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from wk_reference import WKPooling  # noqa: E402  (the notebook's code, verbatim)

from poolx.exporter.export import export  # noqa: E402
from poolx.parity.texts import VERIFY_TEXTS  # noqa: E402
from poolx.manifest import Manifest  # noqa: E402
from poolx.models import BackboneFeatures, PooledEncoder  # noqa: E402
from poolx.runtime.session import create_session  # noqa: E402
from poolx.runtime.tokenizer import TextEncoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--layer-start", type=int, default=4)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--optimize", action="store_true", help="export both graphs with --optimize (fused)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="export both graphs at this precision")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="poolx-wk-bench-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    export(None, work / "wk", pooling="wk", layer_start=args.layer_start, window=args.window, max_length=args.length,
           optimize=args.optimize, precision=args.precision)
    export(None, work / "mean", pooling="mean", max_length=args.length, optimize=args.optimize, precision=args.precision)
    manifest = Manifest.read(work / "wk")
    # real text: long passages truncated to `length` tokens (so the rows are full), plus one short padded row
    texts = [" ".join(VERIFY_TEXTS[3 + (i % 17) :]) for i in range(args.batch - 1)] + [VERIFY_TEXTS[4]]
    feeds = TextEncoder(work / "wk", manifest)(texts, pad_to=args.length)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    tokens = int(feeds["attention_mask"].sum())

    wk_session = create_session(work / "wk" / "model.onnx", "cpu", threads=args.threads)
    mean_session = create_session(work / "mean" / "model.onnx", "cpu", threads=args.threads)
    encoder = PooledEncoder.from_pretrained(None, "wk", layer_start=args.layer_start, window=args.window).eval()
    notebook = WKPooling(args.layer_start, args.window)

    with torch.no_grad():
        out = encoder.backbone(**tensors, output_hidden_states=True)
        hidden = tuple(out.hidden_states)
        stacked = torch.stack(hidden)
        features = BackboneFeatures(hidden[-1], tensors["attention_mask"], hidden)

        def notebook_path():
            o = encoder.backbone(**tensors, output_hidden_states=True)
            return notebook(torch.stack(o.hidden_states), tensors["attention_mask"])

        wk32 = PooledEncoder.from_backbone(
            encoder.backbone, "wk", layer_start=args.layer_start, window=args.window, compute="float32"
        ).pooler
        candidates = {
            "wk graph, end to end (onnxruntime)": lambda: wk_session.run(None, feeds),
            "mean graph, end to end (onnxruntime)": lambda: mean_session.run(None, feeds),
            "notebook path: eager backbone + notebook loop": notebook_path,
            "eager backbone alone (hidden states)": lambda: encoder.backbone(**tensors, output_hidden_states=True),
            "notebook WKPooling loop alone": lambda: notebook(stacked, tensors["attention_mask"]),
            "poolx wk pooler alone (eager, float64 Gram)": lambda: encoder.pooler(features),
            "poolx wk pooler alone (eager, float32 Gram)": lambda: wk32(features),
        }
        runs: dict[str, list[float]] = {name: [] for name in candidates}
        for name, fn in candidates.items():  # one block per candidate, after a warm-up
            fn()
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t)
        graph_out = torch.from_numpy(wk_session.run(None, feeds)[0]).double()
        notebook_out = notebook_path().double()
        agreement = torch.nn.functional.cosine_similarity(graph_out, notebook_out, dim=1).min().item()
    med = {name: statistics.median(v) for name, v in runs.items()}
    names = list(candidates)
    ratio = lambda a, b: med[names[a]] / med[names[b]]  # noqa: E731

    k = 7 - args.layer_start
    print(f"MiniLM, batch {args.batch} x {args.length} ({tokens} real tokens), wk layer_start {args.layer_start} "
          f"(K={k} layers), window {args.window}, {args.threads} threads, torch {torch.__version__}"
          f"{', fused graphs (--optimize)' if args.optimize else ''}, {args.precision} graphs")
    for name in names:
        print(f"  {name:48} {med[name] * 1000:9.1f} ms  (min {min(runs[name]) * 1000:.1f})")
    print(f"wk graph vs notebook path:       {ratio(2, 0):6.1f}x faster (target >= 5x; ratio of medians)")
    print(f"wk pooler vs notebook loop:      {ratio(4, 5):6.1f}x faster (target >= 50x)")
    print(f"wk graph / mean graph:           {ratio(0, 1):6.2f}x the cost (target <= 1.3x)")
    print(f"float64 Gram / float32 Gram:     {ratio(5, 6):6.2f}x (pooler alone)")
    print(f"wk graph vs notebook output:     min cosine {agreement:.6f}")


if __name__ == "__main__":
    main()
