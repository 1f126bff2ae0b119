"""torch's two ONNX exporters compared per architecture family (issue 15): the TorchScript exporter with
onnxruntime's transformer optimizer, and the dynamo exporter with onnxscript's ort fusions. Each candidate runs in a
process of its own (2 threads for torch and onnxruntime).

- `coverage`: every family as a tiny random model (the configs and tokenizers of tests/test_families.py: hidden
  32, 2 layers), exported with --optimize (mean pooling) on each exporter, verified against eager PyTorch on the
  verify texts: fused ops, nodes, export seconds, verify and max abs. What the adapters' `fusions` /
  `dynamo_fusions` pin.
- `speed`: one model (default the packaged all-MiniLM-L6-v2; `--base`: a BERT-base-shaped random model;
  `--family T`: a random model of model type T in MiniLM's shape),
  plain and fused on each exporter, onnxruntime on the CPU with 2 threads, median ms per batch at each shape
  (random token ids, every position attended), and the ratio to the TorchScript plain graph.

    python benchmarks/exporters.py coverage [--families bert,modernbert,...]
    python benchmarks/exporters.py speed [--base | --family qwen3] [--shapes 32x128,1x16] [--runs 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
EXPORTERS = ("torchscript", "dynamo")
THREADS = 2


def _run(*args: str) -> dict:
    """One candidate in a process of its own; its last stdout line is its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


# ---- coverage ----------------------------------------------------------------------------------------------------
# MiniLM's shape (6 layers, hidden 384, 12 heads, MLP 1536), for --family in `speed`
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def build_family(model_type: str, directory: Path, size: dict | None = None) -> Path:
    """The tiny model of tests/test_families.py for `model_type` (or, with `size`, a random one of that shape),
    saved at `directory`."""
    sys.path.insert(0, str(TESTS))
    import test_families as f
    from conftest import tiny_tokenizer

    shape = dict(f.TINY, **(size or {}))
    if model_type in f.DECODERS:
        style, extra = f.DECODERS[model_type]
        if size and "head_dim" in extra:  # Qwen3's and Gemma's default head_dim is not hidden / heads
            extra = dict(extra, head_dim=size["hidden_size"] // size["num_attention_heads"])
        tokenizer = f.bpe_tokenizer(style)
        return f.save_tiny(model_type, directory, tokenizer, **shape, **extra, vocab_size=len(tokenizer),
                           num_key_value_heads=2 if not size else 4, max_position_embeddings=512,
                           pad_token_id=None, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    tokenizer = tiny_tokenizer()
    config = dict(shape, vocab_size=len(tokenizer), **f.ENCODERS[model_type])
    if model_type == "distilbert":
        config = dict(f.ENCODERS[model_type], vocab_size=len(tokenizer))
    if size and model_type == "eurobert":
        config["num_key_value_heads"] = size["num_attention_heads"]
    return f.save_tiny(model_type, directory, tokenizer, **config)


def coverage_one(model: str, exporter: str, out: str, optimize: bool) -> dict:
    import collections

    import onnx
    import torch

    from poolx.errors import PoolxError
    from poolx.exporter.export import export
    from poolx.parity.verify import verify

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    try:
        manifest = export(model, out, pooling="mean", optimize=optimize, max_length=64, exporter=exporter).manifest
    except PoolxError as e:
        return {"error": str(e)[:200]}
    seconds = time.perf_counter() - start
    report = verify(out, raise_on_failure=False)
    nodes = collections.Counter(n.op_type for n in onnx.load(str(Path(out) / "model.onnx")).graph.node)
    return {"fusions": manifest.graph["fusions"] or {}, "nodes": sum(nodes.values()), "seconds": round(seconds, 1),
            "passed": report.passed, "max_abs": max(o.max_abs for o in report.outputs)}


def coverage(families: list[str]) -> None:
    sys.path.insert(0, str(TESTS))
    import test_families as f

    names = families or sorted(f.ENCODERS) + sorted(f.DECODERS)
    root = Path(tempfile.mkdtemp(prefix="poolx-exporters-"))
    try:
        print("| family | exporter | fused ops (--optimize) | nodes | export s | verify, max abs |")
        print("|---|---|---|---|---|---|")
        for model_type in names:
            model = build_family(model_type, root / model_type)
            for exporter in EXPORTERS:
                out = root / f"{model_type}-{exporter}"
                r = _run("_coverage", str(model), exporter, str(out), "1")
                shutil.rmtree(out, ignore_errors=True)
                if "error" in r:
                    print(f"| {model_type} | {exporter} | error: {r['error']} | | | |", flush=True)
                    continue
                fused = ", ".join(f"{k} {v}" for k, v in sorted(r["fusions"].items()))
                check = f"{'pass' if r['passed'] else 'FAIL'}, {r['max_abs']:.1e}"
                print(f"| {model_type} | {exporter} | {fused} | {r['nodes']} | {r['seconds']} | {check} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- speed -------------------------------------------------------------------------------------------------------
def speed_one(directory: str, shapes: list[tuple[int, int]], runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from poolx.manifest import Manifest

    manifest = Manifest.read(directory)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(Path(directory) / manifest.graph_file), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    result = {}
    for batch, length in shapes:
        feeds = {name: (rng.integers(5, 500, (batch, length)) if name == "input_ids" else
                        np.ones((batch, length)) if name == "attention_mask" else np.zeros((batch, length))).astype(np.int64)
                 for name in manifest.io.input_names}
        for _ in range(3):
            session.run(None, feeds)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t)
        result[f"{batch}x{length}"] = round(1000 * float(np.median(times)), 2)
    return result


def export_one(model: str, out: str, exporter: str, optimize: bool) -> dict:
    import collections

    import onnx
    import torch

    from poolx.exporter.export import export

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    manifest = export(model or None, out, pooling="mean", optimize=optimize, exporter=exporter).manifest
    nodes = collections.Counter(n.op_type for n in onnx.load(str(Path(out) / "model.onnx")).graph.node)
    return {"fusions": manifest.graph["fusions"] or {}, "nodes": sum(nodes.values()),
            "seconds": round(time.perf_counter() - start, 1)}


def build_base(directory: Path) -> Path:
    """A BERT-base-shaped random model (BertConfig's defaults: 12 layers, hidden 768) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    sys.path.insert(0, str(TESTS))
    from conftest import minilm_path

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(directory)
    return directory


def speed(base: bool, shapes: list[tuple[int, int]], runs: int, rounds: int, family: str = "") -> None:
    """Every candidate exported first, then timed in `rounds` rounds (a process per candidate per round, the
    candidates in turn), keeping each one's best median: a machine shared with other work slows some rounds."""
    root = Path(tempfile.mkdtemp(prefix="poolx-exporters-"))
    try:
        if family:
            model = str(build_family(family, root / family, MINILM_SHAPE))
            label = f"{family} (random, MiniLM's shape: 6 layers, hidden 384)"
        else:
            model = str(build_base(root / "base")) if base else ""
            label = "BERT-base (random)" if base else "all-MiniLM-L6-v2"
        cols = [f"{b}x{s}" for b, s in shapes]
        made: dict[tuple[str, bool], dict] = {}
        for exporter in EXPORTERS:
            for optimize in (False, True):
                made[exporter, optimize] = _run("_export", model, str(root / f"{exporter}-{optimize}"), exporter,
                                                "1" if optimize else "0")
        best: dict[tuple[str, bool], dict] = {key: {} for key in made}
        for _ in range(rounds):
            for (exporter, optimize), m in made.items():
                if "error" in m:
                    continue
                times = _run("_speed", str(root / f"{exporter}-{optimize}"), ",".join(cols), str(runs))
                for c, t in times.items():
                    if c in cols:
                        best[exporter, optimize][c] = min(t, best[exporter, optimize].get(c, float("inf")))
        print(f"{label}, onnxruntime {THREADS} threads, best of {rounds} rounds of median ms per batch "
              "(speed ratio to the torchscript plain graph)")
        print("| exporter | graph | fused ops | nodes | export s | " + " | ".join(cols) + " |")
        print("|---|---|---|---|---|" + "---|" * len(cols))
        reference = best["torchscript", False]
        for (exporter, optimize), m in made.items():
            kind = "fused" if optimize else "plain"
            if "error" in m:
                print(f"| {exporter} | {kind} | error: {m['error']} | | | " + " | ".join("" for _ in cols) + " |")
                continue
            times = best[exporter, optimize]
            cells = [f"{times[c]} ({reference[c] / times[c]:.2f}x)" if c in times and c in reference else "error"
                     for c in cols]
            fused = ", ".join(f"{k} {v}" for k, v in sorted(m["fusions"].items())) or "-"
            print(f"| {exporter} | {kind} | {fused} | {m['nodes']} | {m['seconds']} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _shapes(text: str) -> list[tuple[int, int]]:
    return [(int(b), int(s)) for b, s in (item.split("x") for item in text.split(",") if item)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):  # a worker: one candidate, a JSON line
        kind, *rest = argv
        if kind == "_coverage":
            result = coverage_one(rest[0], rest[1], rest[2], rest[3] == "1")
        elif kind == "_export":
            result = export_one(rest[0], rest[1], rest[2], rest[3] == "1")
        else:
            result = speed_one(rest[0], _shapes(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cov = sub.add_parser("coverage")
    cov.add_argument("--families", default="", help="comma-separated model types (default: every family)")
    spd = sub.add_parser("speed")
    spd.add_argument("--base", action="store_true", help="a BERT-base-shaped random model instead of MiniLM")
    spd.add_argument("--shapes", default="32x128,1x16")
    spd.add_argument("--runs", type=int, default=20)
    spd.add_argument("--rounds", type=int, default=3)
    spd.add_argument("--family", default="", help="a random model of this model type in MiniLM's shape")
    args = parser.parse_args(argv)
    if args.command == "coverage":
        coverage([f for f in args.families.split(",") if f])
    else:
        speed(args.base, _shapes(args.shapes), args.runs, args.rounds, args.family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
