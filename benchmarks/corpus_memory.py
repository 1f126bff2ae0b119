"""Peak memory of `poolx embed` against the corpus length: does it stay flat (poolx.corpus streams)?

Builds the tests' tiny random BERT (4 layers, width 32, the MiniLM tokenizer) and its mean-pooling export in a
temporary directory, writes corpora of N lines (default 100,000 and 1,000,000) as .txt, .jsonl and .parquet
(short texts, a blank line every 101), and runs `poolx embed DIR -i IN -o OUT.npy --provider cpu` on each under
`/usr/bin/time -v`, printing the maximum resident set size and the wall time. The tiny model keeps the run
short (about 10,000 texts/s on 2 cores); memory outside the model does not depend on it.

    python benchmarks/corpus_memory.py [--lines 100000,1000000] [--formats txt,jsonl,parquet] [--ids]
    python benchmarks/corpus_memory.py --long-line 5,50 [--long-text words|word|spaces] [--export DIR]

--long-line N,... instead embeds one .txt line of N MB (issue 14: a 50 MB line took 99 s and 7.2 GB when texts were
tokenized whole; they are now cut before tokenization): `words` repeats "lorem ipsum dolor sit amet ", `word` is
one word of N MB ("xxx...", one [UNK]), `spaces` is N MB of spaces and then a word. --export DIR uses an existing
export (e.g. MiniLM's: `poolx export -o DIR`) instead of the tiny BERT. --ids adds an id column (.jsonl and .parquet) and writes .parquet output with ids, to include the duplicate-id
check (8 bytes per id). `--float32-check` instead runs the exhaustive check behind the .jsonl writer: over all
2**32 float32 bit patterns, which ones orjson's shortest form does not read back (through a float64, as JSON
readers do) to the same bits (about 15 minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_export(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from conftest import build_tiny_model  # the tests' tiny BERT, as the bert_mean fixture builds it

    from poolx.exporter.export import export

    build_tiny_model("bert", root / "bert")
    return export(str(root / "bert"), root / "bert-mean", pooling="mean", max_length=64).directory


def text(i: int) -> str:
    return "" if i % 101 == 0 else f"item {i % 977} topic {i % 13}"


def write_corpus(path: Path, lines: int, ids: bool) -> None:
    fmt = path.suffix[1:]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"text": [text(i) for i in range(lines)]}
        if ids:
            columns["id"] = [f"doc-{i}" for i in range(lines)]
        pq.write_table(pa.table(columns), path)  # pyarrow's defaults: one row group of up to 1Mi rows
        return
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            if fmt == "txt":
                f.write(text(i) + "\n")
            else:
                f.write(json.dumps({"id": f"doc-{i}", "text": text(i)} if ids else {"text": text(i)}) + "\n")


def run(export: Path, source: Path, out: Path, ids: bool) -> tuple[int, float, str]:
    """(max RSS in KiB, wall seconds, the command) of one `poolx embed` under /usr/bin/time -v."""
    command = [sys.executable, "-m", "poolx.cli", "embed", str(export), "-i", str(source), "-o", str(out),
               "--provider", "cpu", "--force"] + (["--id-column", "id"] if ids else [])
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"poolx embed failed: {done.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    shown = "poolx embed " + " ".join(command[4:]).replace(str(export.parent), "$TMP")
    return rss, seconds, shown


def long_line(path: Path, megabytes: float, kind: str) -> None:
    size = int(megabytes * 1_000_000)
    unit = {"words": "lorem ipsum dolor sit amet ", "word": "x", "spaces": " "}[kind]
    with open(path, "w", encoding="utf-8") as f:
        f.write(unit * (size // len(unit)) + (" end" if kind == "spaces" else "") + "\n")


def float32_check() -> None:
    import numpy as np
    import orjson

    bad: list[int] = []
    start = time.perf_counter()
    step = 1 << 23
    for first in range(0, 1 << 32, step):
        floats = np.arange(first, first + step, dtype=np.uint64).astype(np.uint32).view(np.float32)
        floats = floats[np.isfinite(floats)]
        back = np.array(orjson.loads(orjson.dumps(floats, option=orjson.OPT_SERIALIZE_NUMPY)), dtype=np.float64)
        wrong = back.astype(np.float32).view(np.uint32) != floats.view(np.uint32)
        bad += [int(b) for b in floats.view(np.uint32)[wrong]]
    print(f"float32 values whose shortest form reads back wrong: {[hex(b) for b in bad]} "
          f"(orjson {orjson.__version__}, {time.perf_counter() - start:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", default="100000,1000000")
    ap.add_argument("--formats", default="txt,jsonl,parquet")
    ap.add_argument("--ids", action="store_true")
    ap.add_argument("--float32-check", action="store_true")
    ap.add_argument("--long-line", default=None, help="MB of one line, comma-separated sizes")
    ap.add_argument("--long-text", default="words", choices=["words", "word", "spaces"])
    ap.add_argument("--export", type=Path, default=None, help="an existing export (default: the tiny BERT)")
    args = ap.parse_args()
    if args.float32_check:
        float32_check()
        return
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time: apt-get install -y time")
    with tempfile.TemporaryDirectory(prefix="poolx-corpus-memory-") as tmp:
        root = Path(tmp)
        export = args.export.resolve() if args.export else build_export(root)
        if args.long_line:
            print(f"{'one line':<22} {'MB':>9} {'max RSS MiB':>12} {'wall s':>8}  command")
            for megabytes in (float(n) for n in args.long_line.split(",")):
                source = root / f"line-{megabytes:g}MB-{args.long_text}.txt"
                long_line(source, megabytes, args.long_text)
                rss, seconds, command = run(export, source, root / "out.npy", False)
                print(f"{source.name:<22} {megabytes:>9g} {rss / 1024:>12.0f} {seconds:>8.1f}  {command}", flush=True)
                source.unlink()
            return
        print(f"{'input':<22} {'lines':>9} {'max RSS MiB':>12} {'wall s':>8}  command")
        for fmt in args.formats.split(","):
            ids = args.ids and fmt != "txt"
            for lines in (int(n) for n in args.lines.split(",")):
                source = root / f"corpus-{lines}.{fmt}"
                write_corpus(source, lines, ids)
                out = root / ("out.parquet" if ids else "out.npy")
                rss, seconds, command = run(export, source, out, ids)
                print(f"{source.name + (' +ids' if ids else ''):<22} {lines:>9,} {rss / 1024:>12.0f} {seconds:>8.1f}  "
                      f"{command}", flush=True)
                source.unlink()


if __name__ == "__main__":
    main()
